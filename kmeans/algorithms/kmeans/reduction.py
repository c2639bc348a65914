"""Training across hosts: k-means as per-host partial sums that the leader reduces.

Host side. Each host keeps its own rows in its own memory (HERE) and answers the
leader's requests, run on every host by hosts.Cluster.on_every_host: load its share of a
channel; its moments (count, mean, squared deviations) for `standardize` and the
tolerance; a sample for seeding; and, for the centres it is sent, per-cluster sums and
counts, its inertia, how many of its labels changed and its farthest rows (to re-seed
empty clusters). Nothing a host sends grows with its row count.

Leader side. `fit_full_batch`: k-means++ (or random) seeding on a sample drawn from every
host in proportion to its rows, then Lloyd's iterations with scikit-learn's stopping rule
(labels unchanged, or a centre shift below tol x the mean feature variance), `n_init`
runs, the best kept. `fit_mini_batch`: every step each host reads its next
mini_batch_size / hosts rows and the leader moves each centre towards the batch's mean
by its share of the rows that centre has seen (Sculley's mini-batch k-means); a pass is
one read of every host's share or FIFO. It moves K = k x extra_center_factor centres,
their counts decayed by half_life_time_size, and reduces them to k at the end, as one
host does (extra_centres.py). Both return the fitted estimator and the same summary as
single-host training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans import channels
from kmeans.algorithms.kmeans import extra_centres, fitting, streaming
from kmeans.algorithms.kmeans.hyperparameters import Hyperparameters
from kmeans.hosts import Cluster, Hosts

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

log = logging.getLogger("kmeans.train")

LOG_SECONDS = 10.0


# --- host side --------------------------------------------------------------------------


@dataclass
class _Here:
    """What this host holds between the leader's requests."""

    hosts: Hosts = field(default_factory=Hosts)
    found: dict[str, channels.Channel] = field(default_factory=dict)  # the job's channels
    pipe_wait_seconds: float = 60.0
    data: np.ndarray | None = None  # this host's training rows, float32
    labels: np.ndarray | None = None  # their clusters in the previous iteration
    stream: Iterator[np.ndarray] | None = None  # mini-batch: this pass's rows
    held: list[np.ndarray] = field(default_factory=list)  # rows read ahead of the stream
    features: int | None = None


HERE = _Here()


def prepare(hosts: Hosts, found: dict[str, channels.Channel], pipe_wait_seconds: float) -> None:
    """Set this host up before it joins; its arithmetic then spreads over its own cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one BLAS thread per block: the blocks run in parallel
    HERE.hosts, HERE.found, HERE.pipe_wait_seconds = hosts, found, pipe_wait_seconds


def load_share(channel_name: str) -> dict[str, Any]:
    """Load this host's share of a File-mode channel into memory."""
    started = time.perf_counter()
    channel = HERE.found[channel_name]
    parts = channels.share(channel, HERE.hosts.index, HERE.hosts.count)
    HERE.data = channels.load(channel, parts)
    HERE.labels = None
    rows = len(HERE.data)
    seconds = time.perf_counter() - started
    described = ", ".join(
        part.path.name + ("" if part.whole else f" ({_describe(part)})") for part in parts
    )
    log.info(
        "host %s: %d rows x %d features of channel %r in %.2f s from %s",
        HERE.hosts.current,
        rows,
        HERE.data.shape[1],
        channel_name,
        seconds,
        described or "no files",
    )
    return {
        "rows": rows,
        "features": HERE.data.shape[1] if rows else None,
        "seconds": round(seconds, 3),
        "files": _fingerprint(channel),
    }


def release() -> None:
    """Let go of this host's rows: the fit is done."""
    HERE.data = HERE.labels = None


def _describe(part: channels.Part) -> str:
    if part.every > 1:
        return f"every {part.every}th row from row {part.offset + 1}"
    return f"bytes {part.start}-{'end' if part.end is None else part.end}"


def _fingerprint(channel: channels.Channel) -> str:
    """The channel's files and sizes, for FullyReplicated hosts to compare."""
    listed = json.dumps(channels.listing(channel)).encode()
    return hashlib.sha256(listed).hexdigest()[:16]


def moments() -> fitting.Moments:
    """Row count, feature means and sums of squared deviations, in float64."""
    return fitting.moments(HERE.data)


def scale(mean: np.ndarray, scale: np.ndarray) -> None:
    """Standardize this host's rows in place with the statistics of every host."""
    data = HERE.data

    def block(start: int, stop: int) -> None:
        data[start:stop] -= mean.astype(np.float32)
        data[start:stop] /= scale.astype(np.float32)

    fitting.blockwise(block, len(data))


def sample(counts: dict[str, int], seed: int) -> np.ndarray:
    """`counts[this host]` of this host's rows, drawn at random without replacement
    (float32, as held: half the bytes of float64 on the wire)."""
    data, wanted = HERE.data, counts.get(HERE.hosts.current, 0)
    rng = np.random.default_rng([seed, HERE.hosts.index])
    return data[np.sort(rng.choice(len(data), min(wanted, len(data)), replace=False))]


@dataclass
class Partial:
    """One host's share of one iteration; its size does not depend on the host's rows."""

    sums: np.ndarray | None  # per cluster, float64 (None when only assigning)
    counts: np.ndarray
    inertia: float
    changed: int = 0
    far_distances: np.ndarray = field(default_factory=lambda: np.empty(0))
    far_rows: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    far_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    squares: np.ndarray | None = None  # per cluster, the rows' squared norms (extra_centres.Tally)

    @property
    def nbytes(self) -> int:
        """The numbers it carries (the wire adds a small, fixed framing)."""
        arrays = (self.sums, self.counts, self.far_distances, self.far_rows, self.far_labels)
        arrays += (self.squares,)
        return 16 + sum(array.nbytes for array in arrays if array is not None)


@dataclass
class Costs:
    """What each Lloyd iteration took: seconds, and bytes sent to and from the hosts."""

    seconds: list[float] = field(default_factory=list)
    payload: list[int] = field(default_factory=list)


def _partial(
    rows: np.ndarray,
    centres: np.ndarray,
    sums: bool,
    far: int,
    previous: np.ndarray | None,
    squares: bool = False,
) -> Partial:
    """Assign `rows` to the nearest of `centres`, as scikit-learn does for float32 data:
    |x|² - 2x·c + |c|² in float32, accumulated in float64."""
    k = len(centres)
    centres32 = centres.astype(np.float32)
    squared = rows @ (-2.0 * centres32.T)
    squared += np.einsum("ij,ij->j", centres32.T, centres32.T)
    labels = squared.argmin(axis=1).astype(np.int32)
    norms = np.einsum("ij,ij->i", rows, rows)
    nearest = squared[np.arange(len(rows)), labels] + norms
    np.maximum(nearest, 0, out=nearest)
    changed = 0
    if previous is not None:
        changed = int(np.count_nonzero(previous != labels))
        previous[:] = labels
    result = Partial(
        sums=None,
        counts=np.bincount(labels, minlength=k).astype(np.int64),
        inertia=float(nearest.sum(dtype=np.float64)),
        changed=changed,
    )
    if sums:
        one_hot = np.zeros((len(rows), k), np.float32)
        one_hot[np.arange(len(rows)), labels] = 1.0
        result.sums = (one_hot.T @ rows).astype(np.float64)
    if squares:
        result.squares = np.bincount(labels, weights=norms.astype(np.float64), minlength=k)
    if far:
        far = min(far, len(rows))
        chosen = np.argpartition(nearest, len(rows) - far)[len(rows) - far :]
        result.far_distances = nearest[chosen].astype(np.float64)
        result.far_rows = rows[chosen].astype(np.float64)
        result.far_labels = labels[chosen].astype(np.int64)
    return result


def merge(parts: list[Partial], k: int, far: int = 0) -> Partial:
    """The sum of partials (of blocks, or of hosts), keeping the `far` farthest rows."""
    sums = [p.sums for p in parts if p.sums is not None]
    squares = [p.squares for p in parts if p.squares is not None]
    merged = Partial(
        sums=np.sum(sums, axis=0) if sums else None,
        counts=sum((p.counts for p in parts), np.zeros(k, np.int64)),
        inertia=float(sum(p.inertia for p in parts)),
        changed=sum(p.changed for p in parts),
        squares=np.sum(squares, axis=0) if squares else None,
    )
    rows = [p.far_rows for p in parts if len(p.far_distances)]
    if far and rows:
        distances = np.concatenate([p.far_distances for p in parts])
        order = np.argsort(-distances, kind="stable")[:far]
        merged.far_distances = distances[order]
        merged.far_rows = np.concatenate(rows)[order]
        merged.far_labels = np.concatenate([p.far_labels for p in parts])[order]
    return merged


def lloyd_step(centres: np.ndarray, first: bool, far: int) -> Partial:
    """One Lloyd iteration over this host's rows: sums, counts, inertia, changes."""
    data = HERE.data
    if first or HERE.labels is None:
        HERE.labels = np.full(len(data), -1, np.int32)
    labels = HERE.labels
    parts = fitting.blockwise(
        lambda a, b: _partial(data[a:b], centres, True, far, labels[a:b]), len(data)
    )
    return merge(parts, len(centres), far)


def assign_step(centres: np.ndarray) -> Partial:
    """Counts and inertia of this host's rows for the final centres."""
    data = HERE.data
    parts = fitting.blockwise(lambda a, b: _partial(data[a:b], centres, False, 0, None), len(data))
    return merge(parts, len(centres))


def score_share(estimator: BaseEstimator, channel_name: str, features: int) -> tuple[float, int]:
    """Sum of squared distances and rows of this host's share of a channel."""
    channel = HERE.found[channel_name]
    return streaming.score_blocks(estimator, channel.name, _pass(channel, 0), features)


def _pass(channel: channels.Channel, epoch: int) -> Iterator[channels.Block]:
    """One pass over this host's share of a channel: its parts, or its part of its FIFO."""
    index, count = HERE.hosts.index, HERE.hosts.count
    parts = None if channel.mode == "Pipe" else channels.share(channel, index, count)
    return channels.blocks(
        channel, epoch, HERE.pipe_wait_seconds, parts=parts, host=index, hosts=count
    )


# --- host side, mini-batch ------------------------------------------------------------


def open_pass(channel_name: str, epoch: int) -> None:
    """Start reading this host's share of the channel (or its FIFO) for pass `epoch`."""
    found = _pass(HERE.found[channel_name], epoch)

    def rows() -> Iterator[np.ndarray]:
        for block in found:
            channels.check_block(block)
            HERE.features = block.rows.shape[1]
            yield block.rows

    HERE.stream, HERE.held = rows(), []


def _take(count: int, keep: bool = False) -> np.ndarray:
    """The next `count` rows of this pass (fewer at its end); with `keep` they stay to be
    read again."""
    held, rows = HERE.held, sum(len(r) for r in HERE.held)
    while rows < count and HERE.stream is not None:
        block = next(HERE.stream, None)
        if block is None:
            HERE.stream = None
            break
        held.append(block)
        rows += len(block)
    if not held:
        return np.empty((0, HERE.features or 0), np.float32)
    merged = np.concatenate(held) if len(held) > 1 else held[0]
    taken, rest = merged[:count], merged[count:]
    HERE.held = [merged] if keep else ([rest] if len(rest) else [])
    return taken


def seed_rows(count: int) -> np.ndarray:
    """This pass's first `count` rows, kept to be trained on like any others."""
    return _take(count, keep=True).astype(np.float64)


def chunk_step(
    centres: np.ndarray,
    count: int,
    shift: np.ndarray | None,
    divide: np.ndarray | None,
    squares: bool = False,
) -> tuple[Partial, int, int | None]:
    """The next `count` rows of this pass against `centres`: partial sums (and with
    `squares`, each cluster's squared norms), rows, width."""
    rows = _take(count)
    if len(rows) == 0:
        return Partial(None, np.zeros(len(centres), np.int64), 0.0), 0, HERE.features
    if shift is not None:
        rows = (rows - shift.astype(np.float32)) / divide.astype(np.float32)
    return _partial(rows, centres, True, 0, None, squares), len(rows), rows.shape[1]


# --- leader side -------------------------------------------------------------------------


def _check_shares(
    hp: Hyperparameters, channel: channels.Channel, hosts: Hosts, shares: list[dict]
) -> tuple[int, int]:
    """Total rows and feature count, once every host's share agrees."""
    by_host = dict(zip(hosts.names, shares, strict=True))
    if channel.distribution == channels.FULLY_REPLICATED and channel.mode != "Pipe":
        first = shares[0]["files"]
        for name, share in by_host.items():
            if share["files"] != first:
                raise channels.DataError(
                    f"channel {channel.name!r} is FullyReplicated, but host {name} holds other "
                    f"files than host {hosts.leader}; give each host its own files with "
                    "ShardedByS3Key, or the same files to all"
                )
    widths = {name: share["features"] for name, share in by_host.items() if share["rows"]}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"host {name} has {width}" for name, width in widths.items())
        raise channels.DataError(
            f"the hosts' data differ in feature count ({listed}); every row needs the same"
        )
    rows = sum(share["rows"] for share in shares)
    if rows == 0:
        raise channels.DataError(f"channel {channel.name!r} has no records on any host")
    features = next(iter(widths.values()))
    if hp.feature_dim is not None and hp.feature_dim != features:
        raise channels.DataError(
            f"feature_dim is {hp.feature_dim} but channel {channel.name!r} has {features} "
            "feature columns"
        )
    if rows < hp.k:
        raise channels.DataError(
            f"k is {hp.k} but channel {channel.name!r} has only {rows} rows on all hosts"
        )
    return rows, features


def _sample_counts(hosts: Hosts, rows_by_host: list[int], wanted: int) -> dict[str, int]:
    """`wanted` rows split across hosts in proportion to their rows (largest remainders)."""
    total = sum(rows_by_host)
    exact = [wanted * rows / total for rows in rows_by_host]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: wanted - sum(counts)]:
        counts[i] += 1
    return dict(zip(hosts.names, counts, strict=True))


def _seed(hp: Hyperparameters, sample: np.ndarray, run: int, count: int = 0) -> np.ndarray:
    """`count` centres (k unless given) picked from `sample` by init_method."""
    count = count or hp.k
    if hp.init == "k-means++":
        return kmeans_plusplus(sample, count, hp.seed + run)
    rng = np.random.default_rng([hp.seed, run])
    return sample[rng.choice(len(sample), count, replace=False)].astype(np.float64)


def kmeans_plusplus(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ (Arthur and Vassilvitskii, 2007): each new centre is the best, by
    the sample's inertia, of 2 + ln k rows drawn with probability proportional to their
    squared distance from the centres chosen so far.

    scikit-learn's kmeans_plusplus follows the same rule, drawing from the same random
    stream for a seed, so both pick the same rows; this one is numpy only. scikit-learn
    (with the scipy and pandas it imports, about 150 MB) is loaded only once every host
    has let go of its rows, so that a host's memory is its rows and little else."""
    rows = np.asarray(sample, np.float64)
    random = np.random.RandomState(seed)
    trials = 2 + int(np.log(k))
    squares = np.einsum("ij,ij->i", rows, rows)

    def distances(chosen: np.ndarray) -> np.ndarray:  # squared, from each chosen row to all
        found = squares[chosen, None] - 2.0 * (rows[chosen] @ rows.T) + squares[None, :]
        return np.maximum(found, 0.0, out=found)

    chosen = [int(random.choice(len(rows), p=np.full(len(rows), 1 / len(rows))))]
    closest = distances(np.array(chosen))[0]
    potential = closest.sum()
    for _ in range(1, k):
        targets = random.uniform(size=trials) * potential
        candidates = np.minimum(np.searchsorted(np.cumsum(closest), targets), len(rows) - 1)
        reach = np.minimum(distances(candidates), closest)
        best = int(np.argmin(reach.sum(axis=1)))
        chosen.append(int(candidates[best]))
        closest, potential = reach[best], reach[best].sum()
    return rows[chosen].copy()


def _runs(hp: Hyperparameters, auto_random: int) -> int:
    if hp.n_init != "auto":
        return int(hp.n_init)
    return 1 if hp.init == "k-means++" else auto_random


def _relocate_empty(step: Partial) -> None:
    """Give each empty cluster one of the rows farthest from their centres, taken from the
    cluster it was in: scikit-learn's rule, on the farthest rows of every host."""
    empty = np.flatnonzero(step.counts == 0)
    for cluster, index in zip(empty, range(len(step.far_distances)), strict=False):
        row, old = step.far_rows[index], step.far_labels[index]
        step.sums[old] -= row
        step.counts[old] -= 1
        step.sums[cluster] = row
        step.counts[cluster] = 1
    if len(empty):
        log.info("re-seeded %d empty clusters from the farthest rows", len(empty))


def _lloyd(
    cluster: Cluster, centres: np.ndarray, tolerance: float, max_iter: int, costs: Costs
) -> tuple[np.ndarray, int]:
    """Iterate from `centres` until scikit-learn's rule stops."""
    k = len(centres)
    for iteration in range(1, max_iter + 1):
        started = time.perf_counter()
        partials = cluster.on_every_host(lloyd_step, centres, iteration == 1, k)
        step = merge(partials, k, k)
        costs.payload.append(sum(p.nbytes for p in partials) + centres.nbytes * len(partials))
        _relocate_empty(step)
        filled = step.counts > 0
        updated = centres.copy()
        updated[filled] = step.sums[filled] / step.counts[filled, None]
        shift = float(((updated - centres) ** 2).sum())
        centres = updated
        costs.seconds.append(time.perf_counter() - started)
        log.info(
            "iteration %d: inertia %.6g, %d labels changed, centre shift %.3g (%.3f s)",
            iteration,
            step.inertia,
            step.changed,
            shift,
            costs.seconds[-1],
        )
        if step.changed == 0 or shift <= tolerance:
            break
    return centres, iteration


def fit_full_batch(
    cluster: Cluster, hp: Hyperparameters, channel: channels.Channel
) -> tuple[BaseEstimator, dict[str, Any]]:
    """Lloyd's k-means over the rows of every host, each host holding its own."""
    hosts = cluster.hosts
    started = time.perf_counter()
    shares = cluster.on_every_host(load_share, channel.name)
    load_seconds = time.perf_counter() - started
    rows, features = _check_shares(hp, channel, hosts, shares)
    log.info(
        "loaded %d rows x %d features on %d hosts in %.2f s (%s)",
        rows,
        features,
        hosts.count,
        load_seconds,
        ", ".join(f"{n}: {s['rows']}" for n, s in zip(hosts.names, shares, strict=True)),
    )
    fit_started = time.perf_counter()
    count, mean, squares = fitting.combine_moments(cluster.on_every_host(moments))
    variance = squares / count
    scaling = None
    if hp.standardize:
        deviation = _deviation(variance)
        cluster.on_every_host(scale, mean, deviation)
        scaling = (mean, variance, deviation, count)
        variance = variance / deviation**2
    tolerance = hp.tol * float(np.mean(variance))
    rows_by_host = [share["rows"] for share in shares]
    wanted = min(rows, fitting.SEED_SAMPLE_ROWS)
    best: tuple[float, np.ndarray, int, np.ndarray] | None = None
    costs = Costs()
    runs = _runs(hp, auto_random=10)
    for run in range(runs):
        counts = _sample_counts(hosts, rows_by_host, wanted)
        samples = cluster.on_every_host(sample, counts, hp.seed + run)
        seed_sample = np.concatenate([rows for rows in samples if len(rows)], dtype=np.float64)
        centres, iterations = _lloyd(
            cluster, _seed(hp, seed_sample, run), tolerance, hp.max_iter, costs
        )
        final = merge(cluster.on_every_host(assign_step, centres), hp.k)
        if runs > 1:
            log.info("run %d of %d: inertia %.6g", run + 1, runs, final.inertia)
        if best is None or final.inertia < best[0]:
            best = (final.inertia, centres, iterations, final.counts)
    inertia, centres, iterations, sizes = best
    cluster.on_every_host(release)  # before scikit-learn is imported to make the estimator
    scaler = None if scaling is None else fitting.fitted_scaler(*scaling)
    estimator = fitting.assemble(hp, centres, scaler, inertia, iterations)
    return estimator, {
        "rows": rows,
        "feature_dim": features,
        "ssd": inertia,
        "cluster_sizes": sizes.tolist(),
        "iterations": iterations,
        "hosts": [n for n, s in zip(hosts.names, shares, strict=True) if s["rows"]],
        "rows_by_host": dict(zip(hosts.names, rows_by_host, strict=True)),
        "seconds": {
            "cluster": round(cluster.startup_seconds, 3),
            "load": round(load_seconds, 3),
            "fit": round(time.perf_counter() - fit_started, 3),
            "per_iteration": round(float(np.median(costs.seconds)), 4),
        },
        "bytes_per_iteration": int(np.median(costs.payload)),
    }


def fit_mini_batch(
    cluster: Cluster, hp: Hyperparameters, channel: channels.Channel
) -> tuple[BaseEstimator, dict[str, Any]]:
    """Mini-batch k-means: each step takes mini_batch_size rows from all hosts together."""
    hosts = cluster.hosts
    started = time.perf_counter()
    batch = hp.mini_batch_size or 5000
    per_host = -(-batch // hosts.count)
    moving = extra_centres.centre_count(hp)  # K: k, or more to reduce to k at the end
    centres = counts = shift = divide = scaler = tally = None
    last = {"ssd": 0.0, "rows": 0, "sizes": np.zeros(moving, np.int64), "by_host": {}}
    features = None
    for epoch in range(hp.epochs):
        cluster.on_every_host(open_pass, channel.name, epoch)
        if centres is None:
            seed_size = -(-max(batch, 20 * moving) // hosts.count)
            seeds = cluster.on_every_host(seed_rows, seed_size)
            widths = {n: s.shape[1] for n, s in zip(hosts.names, seeds, strict=True) if len(s)}
            if len(set(widths.values())) > 1:
                listed = ", ".join(f"host {n} has {w}" for n, w in widths.items())
                raise channels.DataError(
                    f"the hosts' data differ in feature count ({listed}); every row needs the same"
                )
            seed_sample = np.concatenate([s for s in seeds if len(s)] or [np.empty((0, 0))])
            if len(seed_sample) < hp.k:
                raise channels.DataError(
                    f"k is {hp.k} but channel {channel.name!r} has only {len(seed_sample)} rows "
                    "on all hosts"
                )
            if len(seed_sample) < moving:
                raise channels.DataError(
                    f"extra_center_factor {hp.extra_center_factor} asks for {moving} centres "
                    f"(k x {extra_centres.factor(hp)}) but channel {channel.name!r} has only "
                    f"{len(seed_sample)} rows on all hosts: lower extra_center_factor or k"
                )
            features = seed_sample.shape[1]
            if hp.feature_dim is not None and hp.feature_dim != features:
                raise channels.DataError(
                    f"feature_dim is {hp.feature_dim} but channel {channel.name!r} has "
                    f"{features} feature columns"
                )
            if hp.standardize:  # as single-host mini-batch: statistics of the first rows
                shift, variance = seed_sample.mean(axis=0), seed_sample.var(axis=0)
                divide = _deviation(variance)
                scaler = fitting.fitted_scaler(shift, variance, divide, len(seed_sample))
                seed_sample = (seed_sample - shift) / divide
            centres = _best_seed(hp, seed_sample, moving)
            counts = np.zeros(moving, np.float64)
        final_pass = epoch == hp.epochs - 1
        tallied = final_pass and moving > hp.k
        if tallied:
            tally = extra_centres.Tally.empty(moving, features)
        seen, ssd, logged, pass_started = 0, 0.0, time.monotonic(), time.monotonic()
        by_host = dict.fromkeys(hosts.names, 0)
        while True:
            steps = cluster.on_every_host(chunk_step, centres, per_host, shift, divide, tallied)
            for name, (_, taken, width) in zip(hosts.names, steps, strict=True):
                by_host[name] += taken
                if taken and width != features:
                    raise channels.DataError(
                        f"host {name}: channel {channel.name!r} has {width} feature columns, "
                        f"the other hosts {features}"
                    )
            step = merge([partial for partial, _, _ in steps], moving)
            taken = int(step.counts.sum())
            if taken == 0:
                break
            seen += taken
            ssd += step.inertia
            if final_pass:
                last["ssd"] += step.inertia
                last["rows"] += taken
                last["sizes"] += step.counts
            if tallied:
                tally.add(step.counts, step.sums, step.squares)
            counts *= extra_centres.decay(taken, hp.half_life_time_size)
            moved = step.counts > 0
            counts[moved] += step.counts[moved]
            centres[moved] += (
                step.sums[moved] - step.counts[moved, None] * centres[moved]
            ) / counts[moved, None]
            if time.monotonic() - logged >= LOG_SECONDS:
                logged = time.monotonic()
                _progress(epoch, hp.epochs, seen, pass_started, ssd)
        _progress(epoch, hp.epochs, seen, pass_started, ssd, done=True)
        last["by_host"] = by_host
    if last["rows"] < hp.k:
        raise channels.DataError(
            f"k is {hp.k} but channel {channel.name!r} has only {last['rows']} rows on all hosts"
        )
    reduced = {}
    sizes = last["sizes"].tolist()
    if moving > hp.k:
        reduction = extra_centres.reduce(hp, centres, counts)
        log.info("%s", reduction.described(moving))
        centres = reduction.centres
        last["ssd"], sizes = tally.scored(reduction)
        reduced = reduction.summary(moving)
    estimator = fitting.assemble(hp, centres, scaler, last["ssd"], hp.epochs)
    return estimator, {
        "rows": last["rows"],
        "feature_dim": features,
        "ssd": last["ssd"],
        "cluster_sizes": sizes,
        "iterations": hp.epochs,
        "hosts": [name for name, rows in last["by_host"].items() if rows],
        "rows_by_host": last["by_host"],
        "seconds": {
            "cluster": round(cluster.startup_seconds, 3),
            "load_and_fit": round(time.perf_counter() - started, 3),
        },
        **reduced,
    }


def _deviation(variance: np.ndarray) -> np.ndarray:
    """Standard deviations, with 1 for constant features (as StandardScaler)."""
    deviation = np.sqrt(variance)
    deviation[deviation < 10 * np.finfo(np.float64).eps] = 1.0
    return deviation


def _best_seed(hp: Hyperparameters, sample: np.ndarray, count: int) -> np.ndarray:
    """The seeding of `count` centres with the lowest inertia on the seed sample, of
    n_init tries."""
    best = None
    for run in range(_runs(hp, auto_random=3)):
        centres = _seed(hp, sample, run, count)
        inertia = _partial(sample.astype(np.float32), centres, False, 0, None).inertia
        if best is None or inertia < best[0]:
            best = (inertia, centres)
    return best[1]


def _progress(epoch: int, epochs: int, seen: int, started: float, ssd: float, done=False):
    elapsed = max(time.monotonic() - started, 1e-9)
    log.info(
        "epoch %d/%d%s: %d rows on all hosts, %.0f rows/s, msd of its batches %.6g",
        epoch + 1,
        epochs,
        " done" if done else "",
        seen,
        seen / elapsed,
        ssd / max(seen, 1),
    )


def score(
    cluster: Cluster, estimator: BaseEstimator, channel: channels.Channel, features: int
) -> tuple[float, int]:
    """The test channel's sum of squared distances and row count, each host scoring its
    own share."""
    results = cluster.on_every_host(score_share, estimator, channel.name, features)
    ssd, rows = sum(r[0] for r in results), sum(r[1] for r in results)
    if rows == 0:
        raise channels.DataError(f"channel {channel.name!r} has files but no records")
    log.info("scored %d rows of channel %r on %d hosts", rows, channel.name, cluster.hosts.count)
    return ssd, rows
