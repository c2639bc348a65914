"""gunicorn's entry point, `kmeans.wsgi:app`.

gunicorn preloads this module in its master process (preload_app), so the model is read
once, before any worker exists, and the forked workers share it copy-on-write. A model
that cannot be loaded stops the server here with one line naming the file and exit code
EXIT_NO_MODEL (3). A multi-model endpoint starts with no model: its registry of loaded
models is made here instead.
"""

import logging
import sys

from kmeans import model_folder, registry
from kmeans.algorithm import Loaded, ModelError
from kmeans.environment import EXIT_NO_MODEL, Environment
from kmeans.predictor import create_app

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s [%(process)d] %(levelname)s %(message)s",
    stream=sys.stdout,
)
log = logging.getLogger("kmeans.serve")


def _loaded(environment: Environment) -> Loaded:
    paths = environment.paths
    try:
        loaded = model_folder.load(paths.model, environment.allow_pickle, environment.algorithm)
    except ModelError as error:
        print(f"serve: cannot start: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_NO_MODEL)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    log.info(
        "model loaded from %s: %s, %d features",
        loaded.source,
        loaded.summary,
        loaded.feature_dim,
    )
    return loaded


environment = Environment.read()
if environment.multi_model:
    app = create_app(registry.create(environment), environment)
else:
    app = create_app(_loaded(environment), environment)
