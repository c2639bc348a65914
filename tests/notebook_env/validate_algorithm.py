"""CreateAlgorithm request bodies checked against botocore's own model of the request.

    .venv-notebook/bin/python tests/notebook_env/validate_algorithm.py BODY.json...

Prints a JSON object: each file -> the problems found (an empty list when there are none).
Run in .venv-notebook, where botocore is (tests/test_algorithm_spec.py). Two checks:
botocore's ParamValidator, what boto3 runs before it sends a request (required members,
types, minimum lengths); then what it leaves to the service, read from the same shapes:
enums (instance types, input modes, parameter types), maximum lengths and counts, and
patterns (Java's, which the `regex` module reads: \\p{L} and the like).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import botocore.session
import regex
from botocore.model import Shape
from botocore.validate import ParamValidator


def service_checks(value: Any, shape: Shape, where: str) -> list[str]:
    """What ParamValidator does not check: enum, max and pattern, at every depth."""
    problems = []
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                problems += service_checks(value[name], member, f"{where}.{name}")
    elif shape.type_name == "list":
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            problems.append(f"{where}: {len(value)} items, at most {shape.metadata['max']}")
        for index, item in enumerate(value):
            problems += service_checks(item, shape.member, f"{where}[{index}]")
    elif shape.type_name == "map":
        for key, item in value.items():
            problems += service_checks(item, shape.value, f"{where}[{key!r}]")
    elif shape.type_name == "string":
        if shape.enum and value not in shape.enum:
            problems.append(f"{where}: {value!r} is not one of {shape.name}'s values")
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            problems.append(f"{where}: {len(value)} characters, at most {shape.metadata['max']}")
        pattern = shape.metadata.get("pattern")
        if pattern and regex.fullmatch(pattern, value) is None:
            problems.append(f"{where}: {value!r} does not match {pattern!r}")
    return problems


def main(paths: list[str]) -> int:
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateAlgorithm").input_shape
    report = {}
    for path in paths:
        body = json.loads(Path(path).read_text())
        validated = ParamValidator().validate(body, shape)
        problems = [validated.generate_report()] if validated.has_errors() else []
        report[path] = problems + service_checks(body, shape, "CreateAlgorithm")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
