"""Stack-ceiling baseline: a Flask app that reads the body and answers a constant.

Served by bench/launch.py behind our own nginx + gunicorn configuration, it is the fastest
any predictor on this stack can be: whatever ours costs above it is our own work.
"""

from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/ping")
def ping() -> Response:
    return Response(b"", 200, content_type="text/plain")


@app.post("/invocations")
def invocations() -> Response:
    request.get_data(cache=False)
    return Response(b"0,1.5", 200, content_type="text/csv")
