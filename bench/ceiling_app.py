"""Stack-ceiling baseline: a Flask app that reads the body and answers a constant.

It reads the body as ours does, in one read of Content-Length bytes from gunicorn's
stream (werkzeug's get_data reads 64 KB at a time, which for a 6 MB body costs about as
much CPU as the rest of the stack), so that nothing on the stack is faster than it.

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
    environ = request.environ
    environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
    return Response(b"0,1.5", 200, content_type="text/csv")
