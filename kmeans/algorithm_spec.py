"""algorithm.json: the body of SageMaker's CreateAlgorithm request that registers this image.

    python -m kmeans.algorithm_spec [--image URI] [--algorithm NAME] [--name NAME] [--arm64]

prints it for one algorithm (default kmeans), derived from what the code declares, so that
it cannot drift: the hyperparameters, their types, ranges and defaults from the algorithm's
Table (kmeans/hyperparameters.py), the metric definitions and tuning objectives from its
`objectives` and the lines training.py prints, the channels' content types from the
readers (kmeans/formats.py), distributed training and Pipe mode from its capabilities,
and the served content types from the decoder and encoder tables. Only the instance types
are listed here. The committed algorithm.json is this output for K-Means with the image
left as PLACEHOLDER_IMAGE (tests/test_algorithm_spec.py); docs/algorithm-resource.md says
how to fill it and register it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kmeans import algorithms, decoders, encoders, formats
from kmeans.algorithm import Algorithm
from kmeans.hyperparameters import Spec, Table

PLACEHOLDER_IMAGE = "ACCOUNT.dkr.ecr.REGION.amazonaws.com/sage-kmeans:latest"
# The parsers set no upper bound; CreateAlgorithm needs one: a Java int's, and a double's.
INTEGER_MAX, CONTINUOUS_MAX = str(2**31 - 1), str(sys.float_info.max)
# File and FastFile are read as folders (channels.data_files); Pipe only by streaming.
FILE_MODES, PIPE = ("File", "FastFile"), "Pipe"
# Gzip: formats.py knows a gzip-compressed file by its first bytes, in every mode.
COMPRESSION = ("None", "Gzip")
CHANNEL_NAMES = ("train", "test")  # of channels.TRAINING_CHANNELS, the built-in's name
METRIC_LINE = "#quality_metric: host=\\S+, {channel} {name} <loss>=(\\S+)"  # training._finish


def _sizes(family: str, sizes: str) -> list[str]:
    return [f"{family}.{size}" for size in sizes.split()]


# x86 CPU instances, the sizes each API offers (botocore's enums, checked by the tests).
_M5, _M6I = "large xlarge 2xlarge 4xlarge 12xlarge 24xlarge", "large xlarge 2xlarge 4xlarge 8xlarge"
TRAINING_INSTANCE_TYPES = [
    *_sizes("ml.m5", _M5),
    *_sizes("ml.c5", "xlarge 2xlarge 4xlarge 9xlarge 18xlarge"),
    *_sizes("ml.m6i", f"{_M6I} 12xlarge 16xlarge 24xlarge 32xlarge"),
    *_sizes("ml.c6i", "xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 32xlarge"),
]
REALTIME_INSTANCE_TYPES = [
    *_sizes("ml.t2", "medium large xlarge 2xlarge"),
    *_sizes("ml.m5", _M5),
    *_sizes("ml.c5", "large xlarge 2xlarge 4xlarge 9xlarge 18xlarge"),
    *_sizes("ml.m6i", _M6I),
    *_sizes("ml.c6i", _M6I),
]
TRANSFORM_INSTANCE_TYPES = [
    *_sizes("ml.m5", _M5),
    *_sizes("ml.c5", "xlarge 2xlarge 4xlarge 9xlarge 18xlarge"),
    *_sizes("ml.m6i", _M6I),
    *_sizes("ml.c6i", _M6I),
]
# Graviton, for endpoints only (training and batch transform run on x86): docs/graviton.md.
_GRAVITON = "large xlarge 2xlarge 4xlarge 8xlarge"
GRAVITON_INSTANCE_TYPES = [
    *_sizes("ml.m6g", _GRAVITON),
    *_sizes("ml.c6g", _GRAVITON),
    *_sizes("ml.c7g", _GRAVITON),
]


def _text(value: Any) -> str:
    """A default as hyperparameters.json would hold it (JSON for lists and booleans)."""
    if isinstance(value, bool | tuple | list):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _description(key: str, spec: Spec, name: str, default: Any) -> str:
    said = [spec.required or spec.domain.accepts]
    if name != spec.names[0]:
        said.append(f"the same setting as {spec.names[0]}")
    if spec.note:
        said.append(spec.note)
    if default is not None and len(spec.names) > 1:
        said.append(f"default {_text(default)}")
    return "; ".join(said)


def _range(spec: Spec) -> dict[str, Any] | None:
    domain = spec.domain
    if domain.kind == "Integer":
        bounds = {"MinValue": str(int(domain.minimum or 0)), "MaxValue": INTEGER_MAX}
        return {"IntegerParameterRangeSpecification": bounds}
    if domain.kind == "Continuous":
        bounds = {"MinValue": f"{domain.minimum:g}", "MaxValue": CONTINUOUS_MAX}
        return {"ContinuousParameterRangeSpecification": bounds}
    if domain.kind == "Categorical":
        return {"CategoricalParameterRangeSpecification": {"Values": list(domain.values)}}
    return None


def hyperparameter_specifications(table: Table) -> list[dict[str, Any]]:
    """One entry per accepted name: SageMaker refuses a job whose hyperparameters it does
    not list. A setting's default goes on a setting with one name only: were a default
    filled in for `init_method`, a job that sets `init` would have two that disagree."""
    found = []
    defaults = table.defaults
    for key, spec in table.specs.items():
        default = defaults.get(key)
        for name in spec.names:
            entry: dict[str, Any] = {
                "Name": name,
                "Description": _description(key, spec, name, default),
                "Type": spec.domain.kind,
            }
            if (bounds := _range(spec)) is not None:
                entry["Range"] = bounds
            entry["IsTunable"] = spec.tunable
            entry["IsRequired"] = bool(spec.required) and name == spec.names[0]
            if default is not None and len(spec.names) == 1:
                entry["DefaultValue"] = _text(default)
            found.append(entry)
    for name in table.ignored_names:
        found.append(
            {
                "Name": name,
                "Description": "accepted and ignored",
                "Type": "FreeText",
                "IsTunable": False,
                "IsRequired": False,
            }
        )
    return found


def metric_definitions(algorithm: Algorithm) -> list[dict[str, str]]:
    channels = ("train", "test") if algorithm.has_test_metrics else ("train",)
    return [
        {"Name": f"{channel}:{name}", "Regex": METRIC_LINE.format(channel=channel, name=name)}
        for channel in channels
        for name in algorithm.objectives
    ]


def training_channels(algorithm: Algorithm) -> list[dict[str, Any]]:
    content_types = list(formats._FORMATS)
    if algorithm.labels:  # CSV's and Parquet's labels are the ContentType's label_size columns
        content_types += [f"{formats.CSV};label_size=1", f"{formats.PARQUET};label_size=1"]
    modes = [*FILE_MODES, PIPE] if algorithm.streaming else list(FILE_MODES)
    described = {
        "train": "the training rows" + (", labels first" if algorithm.labels else ""),
        "test": "scored with the final model: the test metrics",
    }
    names = CHANNEL_NAMES if algorithm.has_test_metrics else CHANNEL_NAMES[:1]
    return [
        {
            "Name": name,
            "Description": described[name],
            "IsRequired": name == "train",
            "SupportedContentTypes": content_types,
            "SupportedCompressionTypes": list(COMPRESSION),
            "SupportedInputModes": modes,
        }
        for name in names
    ]


def request(
    algorithm: Algorithm, image: str = PLACEHOLDER_IMAGE, name: str = "", arm64: bool = False
) -> dict[str, Any]:
    """The CreateAlgorithm body for `algorithm` in the image `image`."""
    if not name:
        suffix = "" if algorithm.name == algorithms.DEFAULT else f"-{algorithm.name}"
        name = "sage-kmeans" + suffix.replace("_", "-")  # AlgorithmName allows no "_"
    training: dict[str, Any] = {
        "TrainingImage": image,
        "SupportedHyperParameters": hyperparameter_specifications(algorithm.hyperparameters),
        "SupportedTrainingInstanceTypes": TRAINING_INSTANCE_TYPES,
        "SupportsDistributedTraining": algorithm.several_hosts,
        "MetricDefinitions": metric_definitions(algorithm),
        "TrainingChannels": training_channels(algorithm),
    }
    if algorithm.has_test_metrics:
        training["SupportedTuningJobObjectiveMetrics"] = [
            {"Type": goal, "MetricName": f"test:{metric}"}
            for metric, goal in algorithm.objectives.items()
        ]
    realtime = REALTIME_INSTANCE_TYPES + (GRAVITON_INSTANCE_TYPES if arm64 else [])
    return {
        "AlgorithmName": name,
        "AlgorithmDescription": (
            f"{algorithm.name} (scikit-learn) in the sage-kmeans image, "
            "a SageMaker bring-your-own container that trains and serves it"
        ),
        "TrainingSpecification": training,
        "InferenceSpecification": {
            "Containers": [{"Image": image}],
            "SupportedTransformInstanceTypes": TRANSFORM_INSTANCE_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": realtime,
            "SupportedContentTypes": list(decoders.DECODERS),
            "SupportedResponseMIMETypes": list(encoders.ENCODERS),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kmeans.algorithm_spec", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--image", default=PLACEHOLDER_IMAGE, help="the image URI in ECR")
    parser.add_argument("--algorithm", default=algorithms.DEFAULT, choices=algorithms.available())
    parser.add_argument("--name", default="", help="AlgorithmName (default sage-kmeans[-NAME])")
    parser.add_argument(
        "--arm64", action="store_true", help="the image holds arm64 too: Graviton endpoints"
    )
    args = parser.parse_args(argv)
    body = request(algorithms.named(args.algorithm), args.image, args.name, args.arm64)
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
