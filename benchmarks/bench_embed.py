"""What the integrations add per request, beside the metrics libraries users reach for today.

ASGI: one GET through a trivial Starlette app (one route answering ``ok``), called in-process
(no server, no socket: the app's own per-request cost, which is what a middleware adds to),
bare and with each instrumentation at its defaults:

- meshstats ``IstioMiddleware`` (Istio's 25 labels, a counter and three histograms; the
  request carries a client's exchange headers, so the peer is a known workload), on the
  compiled and on the pure-Python store;
- prometheus-fastapi-instrumentator (``Instrumentator().instrument(app)``: a counter, size
  summaries and two latency histograms labelled by handler, method and status);
- starlette-exporter (``PrometheusMiddleware``: a counter and a latency histogram by
  method, path, status and app name).

gRPC: one unary call over loopback to a ``grpc.server`` in the same process (client and
server interceptors both on, so the CPU time covers both ends), bare, with meshstats'
interceptors (Istio's 25 labels on the request's counter and three histograms, 20 on the two
message counters, the exchange both ways; on the compiled and on the pure-Python store), and
with py-grpc-prometheus' (at its defaults: counters only, its latency histograms are off
unless enabled); and, as a floor, interceptors that only send the metadata meshstats'
exchange sends once both ends have met (the alias alone each way) and record nothing: what
gRPC itself spends on it.
The whole call's CPU swings by more from round to round (gRPC core's threads) than an
interceptor costs, so the first gRPC table is the thread CPU time spent inside each
library's interceptors, server and client apart; the whole process's follows.

pytest-benchmark runs the cases one after the other (``pytest benchmarks/bench_embed.py
--benchmark-only``). For the figures, rounds interleaved (per-request CPU time, less exposed
to a shared machine's drift)::

    PYTHONPATH=src python benchmarks/bench_embed.py --rounds 11 [--only asgi|grpc]

``--grpc-compare FILE`` adds one more gRPC case: another version of ``meshstats/grpc.py``
(``git show main:src/meshstats/grpc.py > /tmp/grpc_main.py``), for a before/after measured
in the same run.

``--instructions`` counts instead the instructions each gRPC case executes per call, every
thread of the process, under valgrind's callgrind (each case in its own process, untimed,
two call counts whose difference is the calls alone): a measure that does not swing with
the machine's load as CPU time does (two runs of a case differ by up to about 15k
instructions a call, 2% of the call, where CPU time's middle half spans 100 us, 15%)::

    PYTHONPATH=src python benchmarks/bench_embed.py --instructions
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from types import ModuleType
from typing import Any

import grpc
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from meshstats import StatsEngine
from meshstats._embed import Exchange
from meshstats.asgi import IstioMiddleware
from meshstats.grpc import MX_GRPC_ALIAS, IstioClientInterceptor, IstioServerInterceptor

SERVER = {"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default",
          "LABELS": {"app": "reviews", "version": "v2"}}  # fmt: skip
CLIENT = {"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default",
          "LABELS": {"app": "productpage", "version": "v1"}}  # fmt: skip
ASGI_GROUP = "ASGI: one GET through a trivial Starlette app, in-process (per request)"
GRPC_GROUP = "gRPC: one unary call over loopback, client and server in-process (per call)"
BATCH = 200  # requests per benchmark call


# -- ASGI ------------------------------------------------------------------------------------


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/reviews/1", _ok)])


def _scope() -> dict[str, Any]:
    mx = Exchange(StatsEngine(CLIENT))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/reviews/1", "raw_path": b"/reviews/1", "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 9080), "client": ("127.0.0.1", 40000),
        "headers": [
            (b"host", b"reviews:9080"), (b"user-agent", b"bench"), (b"accept", b"*/*"),
            (b"x-envoy-peer-metadata", mx.metadata_b),
            (b"x-envoy-peer-metadata-id", mx.node_id_b),
        ],
    }  # fmt: skip


class AsgiCase:
    """``run(n)``: n requests through ``app`` on one event loop, checked to answer 200."""

    def __init__(self, app: Any) -> None:
        self.loop = asyncio.new_event_loop()
        scope = _scope()
        request = {"type": "http.request", "body": b"", "more_body": False}
        status: list[int] = []
        self.status = status

        async def receive() -> dict[str, Any]:
            return request

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        async def batch(n: int) -> None:
            for _ in range(n):
                await app(dict(scope), receive, send)

        self._batch = batch

    def run(self, n: int) -> None:
        self.status.clear()
        self.loop.run_until_complete(self._batch(n))
        assert self.status == [200] * n, self.status[:3]

    def close(self) -> None:
        self.loop.close()


def asgi_cases(store_c: ModuleType, store_py: ModuleType) -> dict[str, AsgiCase]:
    import prometheus_client
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette_exporter import PrometheusMiddleware

    cases: dict[str, AsgiCase] = {"bare Starlette app": AsgiCase(starlette_app())}
    for name, store in (("meshstats C", store_c), ("meshstats pure Python", store_py)):
        app = starlette_app()
        app.add_middleware(IstioMiddleware, engine=StatsEngine(SERVER, store=store.Store()))
        cases[f"+ {name} IstioMiddleware"] = AsgiCase(app)
    app = starlette_app()
    Instrumentator(registry=prometheus_client.CollectorRegistry()).instrument(app)
    cases["+ prometheus-fastapi-instrumentator"] = AsgiCase(app)
    app = starlette_app()
    app.add_middleware(PrometheusMiddleware)  # its metrics live in the default registry
    cases["+ starlette-exporter"] = AsgiCase(app)
    return cases


# -- gRPC ------------------------------------------------------------------------------------


def _echo(request: bytes, context: Any) -> bytes:
    return request


class Spent:
    """Thread CPU time spent inside one library's interceptors, per call, the server's and
    the client's apart: the whole call's CPU over loopback swings by more (gRPC core's
    threads) than they cost."""

    def __init__(self) -> None:
        self.server = 0.0
        self.client = 0.0
        self.calls = 0

    def take(self) -> tuple[float, float]:
        """(server, client) seconds per call since the last take."""
        calls = max(self.calls, 1)
        per_call = (self.server / calls, self.client / calls)
        self.server, self.client, self.calls = 0.0, 0.0, 0
        return per_call


class ServerTimer(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs ``inner`` (or nothing) and counts its thread CPU time, the servicer's excluded."""

    def __init__(self, inner: Any, spent: Spent) -> None:
        self.inner = inner
        self.spent = spent

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        clock, spent = time.thread_time, self.spent
        app = [0.0]

        def timed_app(d: Any) -> Any:
            t = clock()
            handler = continuation(d)
            behavior = handler.unary_unary

            def run(request: Any, context: Any) -> Any:
                t = clock()
                try:
                    return behavior(request, context)
                finally:
                    app[0] += clock() - t

            out = grpc.unary_unary_rpc_method_handler(
                run, handler.request_deserializer, handler.response_serializer
            )
            app[0] += clock() - t
            return out

        t0 = clock()
        handler = (
            self.inner.intercept_service(timed_app, details) if self.inner else timed_app(details)
        )
        spent.server += clock() - t0 - app[0]
        app[0] = 0.0
        behavior = handler.unary_unary

        def measured(request: Any, context: Any) -> Any:
            t = clock()
            try:
                return behavior(request, context)
            finally:
                spent.server += clock() - t - app[0]

        return grpc.unary_unary_rpc_method_handler(
            measured, handler.request_deserializer, handler.response_serializer
        )


class ClientTimer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Runs ``inner`` (or nothing) around a blocking unary call and counts its thread CPU
    time, the call itself excluded (its done callbacks run in here too)."""

    def __init__(self, inner: Any, spent: Spent) -> None:
        self.inner = inner
        self.spent = spent

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        clock = time.thread_time
        inside = [0.0]

        def call(d: Any, r: Any) -> Any:
            t = clock()
            out = continuation(d, r)
            inside[0] += clock() - t
            return out

        t0 = clock()
        if self.inner is not None:
            out = self.inner.intercept_unary_unary(call, details, request)
        else:
            out = call(details, request)
        self.spent.client += clock() - t0 - inside[0]
        self.spent.calls += 1
        return out


class GrpcCase:
    """A grpc.server and an intercepted channel to it; ``run(n)`` makes n unary calls.

    ``spent`` collects the thread CPU time the case's interceptors take (see :class:`Spent`).
    """

    def __init__(
        self, server_interceptor: Any, client_interceptor: Any, timed: bool = True
    ) -> None:
        self.spent = Spent()
        self.interceptors = (server_interceptor, client_interceptor)
        if timed:
            server_side = [ServerTimer(server_interceptor, self.spent)]
            client_side: Any = ClientTimer(client_interceptor, self.spent)
        else:  # what a user's process runs: no timers, and no interceptor for a None
            server_side = [server_interceptor] if server_interceptor is not None else []
            client_side = client_interceptor
        self.server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=server_side)
        handler = grpc.method_handlers_generic_handler(
            "bench.Reviews", {"Get": grpc.unary_unary_rpc_method_handler(_echo)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        if client_side is not None:
            self.channel = grpc.intercept_channel(self.channel, client_side)
        self.call = self.channel.unary_unary("/bench.Reviews/Get")
        self.run(10)  # the connection is up before anything is timed
        self.spent.take()

    def run(self, n: int) -> None:
        call = self.call
        for _ in range(n):
            assert call(b"review-1", timeout=60) == b"review-1"

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None).wait(60)


class ExchangeOnlyServer(grpc.ServerInterceptor):  # type: ignore[misc]
    """Answers with the trailing metadata meshstats' server interceptor sends a meshstats
    client it has met (the alias alone), and does nothing else: what the exchange itself
    costs gRPC, apart from recording anything."""

    def __init__(self) -> None:
        ex = Exchange(StatsEngine(SERVER))
        self.answer = ((MX_GRPC_ALIAS, ex.metadata),)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        behavior, answer = handler.unary_unary, self.answer

        def answered(request: Any, context: Any) -> Any:
            context.set_trailing_metadata(answer)
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            answered, handler.request_deserializer, handler.response_serializer
        )


class ExchangeOnlyClient(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sends the metadata meshstats' client interceptor sends a meshstats server it has met
    (the alias alone), and does nothing else."""

    def __init__(self) -> None:
        ex = Exchange(StatsEngine(CLIENT))
        self.out = ((MX_GRPC_ALIAS, ex.metadata),)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=list(self.out)), request)


def load_grpc_module(path: str) -> ModuleType:
    """Another version of ``meshstats/grpc.py`` (``git show <rev>:src/meshstats/grpc.py``),
    loaded beside this one inside the package, for a before/after in one run: a change's
    effect is smaller than the drift between two runs on a shared machine."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("meshstats._grpc_compared", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def grpc_case_factories(
    store_c: ModuleType, store_py: ModuleType, compared: str | None = None, timed: bool = True
) -> dict[str, Callable[[], GrpcCase]]:
    """Each gRPC case by name, built when called (``timed``: see :class:`GrpcCase`)."""
    # py-grpc-prometheus ships no types
    from py_grpc_prometheus.prometheus_client_interceptor import (  # type: ignore[import-untyped]
        PromClientInterceptor,
    )
    from py_grpc_prometheus.prometheus_server_interceptor import (  # type: ignore[import-untyped]
        PromServerInterceptor,
    )

    def meshstats(store: ModuleType, module: Any = None, **client: Any) -> Callable[[], GrpcCase]:
        def build() -> GrpcCase:
            serving = module.IstioServerInterceptor if module else IstioServerInterceptor
            calling = module.IstioClientInterceptor if module else IstioClientInterceptor
            server = StatsEngine(SERVER, store=store.Store())
            caller = StatsEngine(CLIENT, store=store.Store())
            return GrpcCase(serving(server), calling(caller, host="reviews:9080", **client), timed)

        return build

    cases: dict[str, Callable[[], GrpcCase]] = {
        "bare grpcio": lambda: GrpcCase(None, None, timed),
        "+ meshstats C interceptors": meshstats(store_c),
        "+ meshstats pure Python interceptors": meshstats(store_py),
        # The opt-in lean exchange between meshstats ends (one metadata entry each way).
        "+ meshstats C interceptors, istio_headers='auto'": meshstats(
            store_c, istio_headers="auto"
        ),
    }
    if compared is not None:  # the C store, as the first meshstats case
        cases[f"+ meshstats C, {os.path.basename(compared)}"] = meshstats(
            store_c, load_grpc_module(compared)
        )
    cases["+ py-grpc-prometheus"] = lambda: GrpcCase(
        PromServerInterceptor(), PromClientInterceptor(), timed
    )
    cases["+ the exchange's metadata alone"] = lambda: GrpcCase(
        ExchangeOnlyServer(), ExchangeOnlyClient(), timed
    )
    return cases


def grpc_cases(
    store_c: ModuleType, store_py: ModuleType, compared: str | None = None
) -> dict[str, GrpcCase]:
    return {
        name: build() for name, build in grpc_case_factories(store_c, store_py, compared).items()
    }


# -- pytest-benchmark --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asgi(store_c: ModuleType, store_py: ModuleType) -> Iterator[dict[str, AsgiCase]]:
    cases = asgi_cases(store_c, store_py)
    yield cases
    for case in cases.values():
        case.close()


@pytest.fixture(scope="module")
def grpc_pair(store_c: ModuleType, store_py: ModuleType) -> Iterator[dict[str, GrpcCase]]:
    cases = grpc_cases(store_c, store_py)
    yield cases
    for case in cases.values():
        case.close()


ASGI_NAMES = [
    "bare Starlette app",
    "+ meshstats C IstioMiddleware",
    "+ meshstats pure Python IstioMiddleware",
    "+ prometheus-fastapi-instrumentator",
    "+ starlette-exporter",
]


@pytest.mark.benchmark(group=ASGI_GROUP)
@pytest.mark.parametrize("name", ASGI_NAMES)
def test_asgi(benchmark: Any, asgi: dict[str, AsgiCase], name: str) -> None:
    benchmark.extra_info["calls_per_round"] = BATCH
    benchmark(asgi[name].run, BATCH)


@pytest.mark.benchmark(group=GRPC_GROUP)
@pytest.mark.parametrize("name", ["bare grpcio", "+ meshstats C interceptors",
                                  "+ meshstats C interceptors, istio_headers='auto'",
                                  "+ meshstats pure Python interceptors",
                                  "+ py-grpc-prometheus",
                                  "+ the exchange's metadata alone"])  # fmt: skip
def test_grpc(benchmark: Any, grpc_pair: dict[str, GrpcCase], name: str) -> None:
    case = grpc_pair[name]
    benchmark.extra_info["calls_per_round"] = 20
    benchmark(case.run, 20)


def test_grpc_untimed_cases(store_c: ModuleType, store_py: ModuleType) -> None:
    """The cases as ``--instructions`` runs them (no timers; the bare one with no
    interceptor at all) answer, and the meshstats ones record what they answered."""
    for name, build in grpc_case_factories(store_c, store_py, timed=False).items():
        if name == "+ py-grpc-prometheus":
            continue  # its metrics live in the default registry: built once per process
        case = build()
        try:
            case.run(3)  # after the 10 the case makes when built
            server, client = case.interceptors
            assert (server is None) == (client is None) == (name == "bare grpcio"), name
            for side in (server, client) if isinstance(server, IstioServerInterceptor) else ():
                text = side.engine.render().decode()
                assert 'request_protocol="grpc"' in text and "} 13" in text, (name, text)
        finally:
            case.close()


# -- interleaved figures -----------------------------------------------------------------------


def _table(
    title: str,
    runs: dict[str, Callable[[int], None]],
    rounds: int,
    n: int,
    quartiles: bool = False,
) -> None:
    """CPU time of the whole process per request, rounds interleaved (every other round in
    reverse order, so drift within a round weighs on no case more than another), and what
    each case adds to the first. ``quartiles``: for many short rounds, the spread is the
    middle half of the rounds and the ratio that of the medians (min-max and per-round
    ratios are the outliers' then)."""
    per: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.process_time()
            runs[name](n)
            per[name].append((time.process_time() - start) / n)
        print(f"\r{title[:20]}: round {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    bare = per[names[0]]
    ours_added = [o - b for o, b in zip(per[names[1]], bare)]
    spread = "middle half" if quartiles else "min-max"
    print(f"\n{title}: {rounds} rounds of {n}, interleaved; CPU time per request")
    print(f"{'case':<42}{'median':>10}  {f'added ({spread})':>28}  {'added / meshstats C':>20}")
    for name in names:
        times = per[name]
        added = sorted(t - b for t, b in zip(times, bare))
        if quartiles:
            lo, hi = added[len(added) // 4] * 1e6, added[-1 - len(added) // 4] * 1e6
            ours = statistics.median(ours_added)
            ratio = [statistics.median(added) / ours] if ours > 0 else []
        else:
            lo, hi = added[0] * 1e6, added[-1] * 1e6
            ratio = [a / o for a, o in zip(added, ours_added) if o > 0]
        med = statistics.median(times) * 1e6
        text = f"{statistics.median(added) * 1e6:+.1f} µs ({lo:+.1f}..{hi:+.1f})"
        rtext = f"{statistics.median(ratio):.2f}x" if name != names[0] and ratio else ""
        print(f"{name:<42}{med:>8.1f} µs  {text:>28}  {rtext:>20}")


def _inside(cases: dict[str, GrpcCase], rounds: int, n: int) -> None:
    """The interceptors' own thread CPU time per call, server and client ends, less the
    timing harness' (the bare case's), rounds interleaved."""
    per: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, case in cases.items():
            case.spent.take()
            case.run(n)
            per[name].append(case.spent.take())
        print(f"\rinterceptors: round {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    bare = per["bare grpcio"]
    cost = {
        name: [(s - bs, c - bc) for (s, c), (bs, bc) in zip(times, bare)]
        for name, times in per.items()
        if name != "bare grpcio"
    }
    ours = [s + c for s, c in cost["+ meshstats C interceptors"]]

    def text(values: list[float]) -> str:
        med, lo, hi = statistics.median(values), min(values), max(values)
        return f"{med * 1e6:.1f} µs ({lo * 1e6:.1f}-{hi * 1e6:.1f})"

    print(f"\n{GRPC_GROUP}: thread CPU time inside the interceptors per call, {rounds} rounds")
    print(f"of {n}, interleaved; median (lowest-highest round)")
    head = f"{'case':<40}{'both ends':>24}{'server':>24}{'client':>24}{'/ meshstats C':>15}"
    print(head)
    for name, pairs in cost.items():
        both = [s + c for s, c in pairs]
        ratio = statistics.median([b / o for b, o in zip(both, ours) if o > 0])
        server, client = [s for s, _ in pairs], [c for _, c in pairs]
        print(f"{name:<40}{text(both):>24}{text(server):>24}{text(client):>24}{ratio:>14.2f}x")


#: Calls in the two runs of a case under callgrind: their difference is per call only
#: (start-up, imports and the connection cancel out).
INSTRUCTION_CALLS = (200, 2200)


def _callgrind(name: str, calls: int, compared: str | None) -> int:
    """Instructions one process executes (every thread) building case ``name`` and making
    ``calls`` calls, counted by valgrind's callgrind."""
    import re
    import subprocess

    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, os.path.abspath(__file__), "--one-case", name, "--calls", str(calls),
    ]  # fmt: skip
    if compared is not None:
        command += ["--grpc-compare", compared]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{name!r} under callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _instructions(names: list[str], compared: str | None) -> None:
    """Instructions per call of each case, every thread of the process counted, and what
    each adds to the bare call: repeatable where CPU time swings by hundreds of us (see
    the module's docstring). The cases run untimed, as a user's process does (gRPC's
    interceptor machinery included)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    low, high = INSTRUCTION_CALLS
    jobs = [(name, calls) for name in names for calls in (low, high)]
    counts: dict[tuple[str, int], int] = {}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each run is one process
        running = {job: pool.submit(_callgrind, *job, compared) for job in jobs}
        for i, (job, future) in enumerate(running.items()):
            counts[job] = future.result()
            print(f"\rcallgrind: run {i + 1}/{len(jobs)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    per = {name: (counts[name, high] - counts[name, low]) / (high - low) for name in names}
    bare, ours = per[names[0]], per[names[1]] - per[names[0]]
    print(f"\n{GRPC_GROUP}: instructions per call, every thread (callgrind; the difference")
    print(f"of {high} and {low} calls in one process each, the cases untimed)")
    print(f"{'case':<50}{'per call':>12}{'added':>12}{'added / meshstats C':>22}")
    for name in names:
        added = per[name] - bare
        ratio = f"{added / ours:.2f}x" if name != names[0] and ours > 0 else ""
        print(f"{name:<50}{per[name] / 1e3:>10.1f} k{added / 1e3:>+10.1f} k{ratio:>22}")


def main(argv: list[str]) -> int:
    """Per-request CPU time of each case, rounds interleaved; the cost each adds to the bare
    app, and that cost as a multiple of meshstats'."""
    from meshstats import _store_c, _store_py

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--requests", type=int, default=4000, help="ASGI requests per round")
    parser.add_argument("--calls", type=int, default=1000, help="gRPC calls per round")
    parser.add_argument("--only", choices=("asgi", "grpc"), help="one integration's table")
    parser.add_argument(
        "--grpc-compare", metavar="GRPC_PY", help="another meshstats/grpc.py, as one more case"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="gRPC: instructions per call under valgrind's callgrind, instead of CPU time",
    )
    parser.add_argument("--one-case", help=argparse.SUPPRESS)  # a callgrind run's process
    args = parser.parse_args(argv)
    if args.one_case is not None:
        factories = grpc_case_factories(_store_c, _store_py, args.grpc_compare, timed=False)
        case = factories[args.one_case]()
        case.run(args.calls)
        case.close()
        return 0
    if args.instructions:
        names = list(grpc_case_factories(_store_c, _store_py, args.grpc_compare))
        _instructions(names, args.grpc_compare)
        return 0
    if args.only != "grpc":
        asgi = asgi_cases(_store_c, _store_py)
        for case in asgi.values():
            case.run(200)  # warm: the middleware stacks are built on first use
        try:
            _table(ASGI_GROUP, {k: c.run for k, c in asgi.items()}, args.rounds, args.requests)
        finally:
            for asgi_case in asgi.values():
                asgi_case.close()
    if args.only != "asgi":
        cases = grpc_cases(_store_c, _store_py, args.grpc_compare)
        try:
            _inside(cases, args.rounds, args.calls)
            # The whole call swings by hundreds of us from batch to batch: many short
            # batches, alternating, and their middle half.
            batches, calls = args.rounds * 10, max(args.calls // 10, 1)
            runs: dict[str, Callable[[int], None]] = {k: c.run for k, c in cases.items()}
            _table(GRPC_GROUP, runs, batches, calls, quartiles=True)
        finally:
            for grpc_case in cases.values():
                grpc_case.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
