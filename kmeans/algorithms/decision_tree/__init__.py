"""A decision tree on labelled rows: the worked example of bringing your own model.

This one file is the whole algorithm: its hyperparameters, `fit`, the files it saves
and the predictor that serves them. Everything else -- reading channels in every
format, parsing hyperparameters, the HTTP server, every request and answer format,
multi-model endpoints, failure files and metric lines -- is the container's.
Build the image with `--build-arg ALGORITHM=decision_tree` (natively:
SAGE_KMEANS_ALGORITHM=decision_tree) and train on rows whose first column is the class
(ContentType `text/csv;label_size=1`); local_test/decision_tree/ is such a job.

It trains on one host, from File mode: it asks for none of the optional capabilities
(streaming, several hosts), so the container refuses Pipe mode and InstanceCount > 1
in one line. Its model is scikit-learn's estimator in model.joblib, the file every
scikit-learn user knows; as a pickle it is never loaded with
SAGE_KMEANS_ALLOW_PICKLE=false.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kmeans.algorithm import (
    Algorithm,
    Column,
    Data,
    DataError,
    Fitted,
    Job,
    Loaded,
    Metrics,
    ModelError,
    Writer,
)
from kmeans.hyperparameters import Settings, Spec, Table, choice, integer
from kmeans.model_files import unpickle

MODEL_FILE = "model.joblib"


@dataclass(frozen=True)
class Hyperparameters(Settings):
    max_depth: int | None = None
    max_leaf_nodes: int | None = None
    min_samples_split: int = 2
    min_samples_leaf: int = 1
    criterion: str = "gini"
    seed: int = 0
    feature_dim: int | None = None


CRITERIA = {name: name for name in ("gini", "entropy", "log_loss")}
TABLE = Table(
    Hyperparameters,
    {
        "max_depth": Spec(("max_depth",), integer(1), tunable=True),
        "max_leaf_nodes": Spec(("max_leaf_nodes",), integer(2), tunable=True),
        "min_samples_split": Spec(("min_samples_split",), integer(2), tunable=True),
        "min_samples_leaf": Spec(("min_samples_leaf",), integer(1), tunable=True),
        "criterion": Spec(("criterion",), choice(CRITERIA), tunable=True),
        "seed": Spec(("random_state", "seed"), integer(0)),
        "feature_dim": Spec(("feature_dim",), integer(1)),
    },
)


def classes_of(labels: np.ndarray, channel: str) -> np.ndarray:
    """The class of each row from the first label column: names as they are, numbers
    as integers (a class cannot be 1.5)."""
    if labels is None or labels.shape[1] == 0:
        raise DataError(f"channel {channel!r}: the decision tree trains on labelled rows")
    first = labels[:, 0]
    if first.dtype.kind == "f":
        if not np.all(np.isfinite(first)) or not np.all(first == np.round(first)):
            raise DataError(
                f"channel {channel!r}: class labels must be integers or names, "
                f"got {first[~(first == np.round(first))][:1].tolist()}"
            )
        return first.astype(np.int64)
    return first.astype(str)


class Predictor:
    """Rows -> the predicted class and the probability of each class."""

    def __init__(self, tree: Any) -> None:
        self.tree = tree
        self.feature_dim = int(tree.n_features_in_)
        kind = "int" if tree.classes_.dtype.kind in "iu" else "str"
        self.columns = (
            Column("predicted_label", kind),
            *(Column(f"probability_{name}", "float32") for name in tree.classes_.tolist()),
        )

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        probabilities = self.tree.predict_proba(rows)
        predicted = self.tree.classes_.take(probabilities.argmax(axis=1))  # as predict()
        return (predicted, *probabilities.T)


class DecisionTree(Algorithm):
    name = "decision_tree"
    hyperparameters = TABLE
    labels = True
    objectives: ClassVar = {"accuracy": "Maximize"}  # the metric fit and evaluate report

    def fit(self, hp: Hyperparameters, data: Data, job: Job) -> Fitted:
        from sklearn.tree import DecisionTreeClassifier

        rows, features = data.rows.shape
        if hp.feature_dim is not None and hp.feature_dim != features:
            raise DataError(
                f"feature_dim is {hp.feature_dim} but channel {data.channel!r} has "
                f"{features} feature columns"
            )
        classes = classes_of(data.labels, data.channel)
        started = time.perf_counter()
        tree = DecisionTreeClassifier(
            max_depth=hp.max_depth,
            max_leaf_nodes=hp.max_leaf_nodes,
            min_samples_split=hp.min_samples_split,
            min_samples_leaf=hp.min_samples_leaf,
            criterion=hp.criterion,
            random_state=hp.seed,
        ).fit(data.rows, classes)
        accuracy = float(tree.score(data.rows, classes))
        return Fitted(
            model=tree,
            rows=rows,
            feature_dim=features,
            train=Metrics({"accuracy": accuracy}, ("accuracy",)),
            described=(
                f"fitted a decision tree on {rows} rows x {features} features: "
                f"{len(tree.classes_)} classes, depth {tree.get_depth()}, "
                f"{tree.get_n_leaves()} leaves, accuracy {accuracy:.6g}"
            ),
            summary={
                "classes": tree.classes_.tolist(),
                "depth": int(tree.get_depth()),
                "leaves": int(tree.get_n_leaves()),
                "seconds": {"fit": round(time.perf_counter() - started, 3)},
            },
            metadata={"classes": tree.classes_.tolist()},
        )

    def evaluate(
        self, hp: Hyperparameters, model: Any, channel: Any, feature_dim: int, job: Job
    ) -> Metrics:
        from kmeans import channels

        test = channels.load_labelled(channel)
        if test.rows.shape[1] != feature_dim:
            raise DataError(
                f"channel {channel.name!r} has {test.rows.shape[1]} feature columns, "
                f"the training data {feature_dim}"
            )
        classes = classes_of(test.labels, channel.name)
        if classes.dtype.kind != model.classes_.dtype.kind:
            raise DataError(
                f"channel {channel.name!r}: its labels are "
                f"{'names' if classes.dtype.kind == 'U' else 'integers'}, the training data's not"
            )
        return Metrics({"accuracy": float(model.score(test.rows, classes))}, ("accuracy",))

    def files(self, fitted: Fitted) -> dict[str, Writer]:
        import joblib

        return {MODEL_FILE: lambda path: joblib.dump(fitted.model, path, protocol=5)}

    def versions(self) -> dict[str, str]:
        import joblib
        import sklearn

        return {"scikit-learn": sklearn.__version__, "joblib": joblib.__version__}

    def load(
        self, folder: Path, metadata: dict[str, Any], notes: list[str], allow_pickle: bool
    ) -> Loaded:
        from sklearn.tree import DecisionTreeClassifier

        path = folder / MODEL_FILE
        if not path.is_file():
            raise ModelError(f"model file {path} not found")
        if not allow_pickle:
            raise ModelError(
                f"model file {path} is a pickle, which SAGE_KMEANS_ALLOW_PICKLE=false forbids "
                "loading; the decision tree has no other model file"
            )
        tree = unpickle(path, metadata, notes)
        if not isinstance(tree, DecisionTreeClassifier) or not hasattr(tree, "classes_"):
            raise ModelError(
                f"model file {path} holds a {type(tree).__name__}, not a fitted decision tree"
            )
        summary = f"DecisionTreeClassifier, {len(tree.classes_)} classes"
        return Loaded(
            path, "DecisionTreeClassifier", summary, metadata, Predictor(tree), tuple(notes)
        )


ALGORITHM = DecisionTree()
