"""The Flask app test_wsgi.py runs under a real gunicorn: ``gunicorn flask_embed_app:app``.

With ``MESHSTATS_TEST_STORE`` set, every worker records into that shared store
(``Store.shared``), as test_wsgi_workers.py runs it with several workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Flask, Response, request

import meshstats
from meshstats import StatsEngine, Store
from meshstats.wsgi import IstioMiddleware

engine = StatsEngine(
    {
        "WORKLOAD_NAME": "reviews-v2",
        "NAMESPACE": "default",
        "LABELS": {"app": "reviews", "version": "v2"},
    },
    store=Store.shared(os.environ["MESHSTATS_TEST_STORE"])
    if os.environ.get("MESHSTATS_TEST_STORE")
    else None,
)
app = Flask(__name__)
app.wsgi_app = IstioMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, engine=engine, service_host="reviews.default.svc.cluster.local"
)


@app.get("/echo")
def echo() -> Response:
    seen = sorted(k.lower() for k in request.headers.keys())
    return Response("\n".join(seen), content_type="text/plain")


@app.post("/body")
def body() -> Response:
    return Response(str(len(request.get_data())), content_type="text/plain")


@app.get("/boom")
def boom() -> Response:
    raise RuntimeError("the app failed")


@app.get("/stream")
def stream() -> Response:
    def chunks() -> Iterator[bytes]:
        # Bounded: a server that kept writing to a gone client would end it, as 200 "-".
        for _ in range(4000):
            yield b"x" * 65536

    return Response(chunks(), content_type="application/octet-stream")


@app.get("/metrics")
def metrics() -> Response:
    return Response(engine.render(), content_type="text/plain; version=0.0.4")


@app.get("/pid")
def pid() -> Response:
    return Response(str(os.getpid()), content_type="text/plain")


@app.get("/backend")
def backend() -> Response:
    return Response("c" if meshstats.HAS_EXTENSION else "py", content_type="text/plain")
