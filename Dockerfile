# sage-kmeans: a SageMaker "bring your own container" image that trains (`train`) and
# serves (`serve`: nginx -> gunicorn -> Flask) a scikit-learn K-Means model.
# Build: docker build -t sage-kmeans .   (for SageMaker from Apple silicon: --platform linux/amd64)

# Build stage: the pinned dependencies in a venv. Wheels only, so no compiler is needed.
FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
# Debian's own python3; point releases drop old package versions, so apt pins would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The lock: every package pinned with PyPI's sha256 of each of its files (.ci/lock.sh), so pip
# refuses any file the index serves under those names but another hash. Kept in the venv: its
# sha256 is the lock digest that train records in model.json and serve logs. pip's report of
# what it installed (each wheel's name and sha256) stays beside it for the SBOM (.ci/sbom.py).
COPY requirements.txt /opt/venv/requirements.txt
# The libraries' own test suites (pandas, scipy, numpy...) are a sixth of the venv and never run here.
# Compiled after (all, ensurepip's pip too), with hash-based .pyc files, so two builds of one commit
# install the same bytes (a timestamp .pyc holds its source file's mtime, the install time).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
        --require-hashes --no-deps --only-binary=:all: -r /opt/venv/requirements.txt \
        --report /opt/venv/pip-install-report.json \
    && find /opt/venv/lib/python3.11/site-packages -mindepth 2 -type d -name tests -prune \
        -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/venv/lib/python3.11/site-packages >/dev/null

# Final stage: python3, nginx, the venv and the code; no pip cache, no build tools.
FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true \
      org.opencontainers.image.title=sage-kmeans \
      org.opencontainers.image.description="SageMaker BYOC: scikit-learn K-Means, train and serve"
# nginx logs go to the container log; its default paths are root's, so serve points it at a temp dir.
# The base image's packages are upgraded first: the base lags Debian's security fixes (.ci/audit.py
# fails on a pending one).
# hadolint ignore=DL3005,DL3008
RUN apt-get update \
    && apt-get upgrade -y --no-install-recommends \
    && apt-get install -y --no-install-recommends python3 nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/program/kmeans:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/program
# The code last, so editing it rebuilds only this layer. The doors are made executable
# and LF whatever the checkout did to them (git file mode, Windows line endings); the
# modules are compiled now, since PYTHONDONTWRITEBYTECODE would have every start do it.
COPY kmeans kmeans
RUN sed -i 's/\r$//' kmeans/train kmeans/serve kmeans/entrypoint \
    && chmod 755 kmeans/train kmeans/serve kmeans/entrypoint \
    && /opt/venv/bin/python -m compileall -q kmeans
# The algorithm the image trains, and serves model folders that do not name one: a
# package of kmeans/algorithms/ (docs/bring-your-own-model.md).
ARG ALGORITHM=kmeans
ENV SAGE_KMEANS_ALGORITHM=$ALGORITHM
# `train` or `serve` as SageMaker passes them; no argument: see kmeans/entrypoint.
ENTRYPOINT ["/opt/program/kmeans/entrypoint"]
# Provenance, last so that a new commit rebuilds no layer: the OCI labels, and the same identity
# for train (model.json) and serve (its start log). build_and_push.sh and CI fill them from git.
ARG SAGE_KMEANS_REVISION="" SAGE_KMEANS_VERSION="" SAGE_KMEANS_CREATED=""
LABEL org.opencontainers.image.revision=$SAGE_KMEANS_REVISION \
      org.opencontainers.image.version=$SAGE_KMEANS_VERSION \
      org.opencontainers.image.created=$SAGE_KMEANS_CREATED
ENV SAGE_KMEANS_REVISION=$SAGE_KMEANS_REVISION \
    SAGE_KMEANS_VERSION=$SAGE_KMEANS_VERSION \
    SAGE_KMEANS_CREATED=$SAGE_KMEANS_CREATED \
    SAGE_KMEANS_LOCK=/opt/venv/requirements.txt
