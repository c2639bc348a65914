"""Naive-predictor baseline: the common pattern of the classic scikit_bring_your_own example.

CSV: `pandas.read_csv` of the body, the model, `DataFrame.to_csv` out. JSON: `json.loads`,
`np.array`, `json.dumps`; JSON Lines likewise, a line at a time. The model is loaded on
first use in each worker, as that example does. It answers what ours answers (closest
cluster and its distance, per record), so the two do the same work. Served by
bench/launch.py behind our nginx + gunicorn configuration.
"""

import io
import json
import os

import flask
import joblib
import numpy as np
import pandas as pd

MODEL_PATH = os.path.join(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"), "model", "model.joblib")


class ScoringService:
    model = None

    @classmethod
    def get_model(cls):
        if cls.model is None:
            cls.model = joblib.load(MODEL_PATH)
        return cls.model

    @classmethod
    def predict(cls, data):
        distances = cls.get_model().transform(data)
        return distances.argmin(axis=1), distances.min(axis=1)


app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    health = ScoringService.get_model() is not None
    return flask.Response(response="\n", status=200 if health else 404, mimetype="text/plain")


@app.route("/invocations", methods=["POST"])
def transformation():
    if flask.request.content_type == "text/csv":
        data = pd.read_csv(io.StringIO(flask.request.data.decode("utf-8")), header=None)
        print(f"Invoked with {data.shape[0]} records")
        labels, distances = ScoringService.predict(data)
        out = io.StringIO()
        pd.DataFrame({"cluster": labels, "distance": distances}).to_csv(
            out, header=False, index=False
        )
        return flask.Response(response=out.getvalue(), status=200, mimetype="text/csv")
    if flask.request.content_type == "application/json":
        document = json.loads(flask.request.data)
        data = np.array([record["features"] for record in document["instances"]])
        print(f"Invoked with {data.shape[0]} records")
        labels, distances = ScoringService.predict(data)
        predictions = [
            {"closest_cluster": int(label), "distance_to_cluster": float(distance)}
            for label, distance in zip(labels, distances, strict=True)
        ]
        return flask.Response(
            response=json.dumps({"predictions": predictions}),
            status=200,
            mimetype="application/json",
        )
    if flask.request.content_type == "application/jsonlines":
        lines = flask.request.data.decode("utf-8").splitlines()
        data = np.array([json.loads(line)["features"] for line in lines if line.strip()])
        print(f"Invoked with {data.shape[0]} records")
        labels, distances = ScoringService.predict(data)
        answer = "\n".join(
            json.dumps({"closest_cluster": int(label), "distance_to_cluster": float(distance)})
            for label, distance in zip(labels, distances, strict=True)
        )
        return flask.Response(response=answer, status=200, mimetype="application/jsonlines")
    return flask.Response(
        response="This predictor only supports CSV, JSON and JSON Lines data",
        status=415,
        mimetype="text/plain",
    )
