"""The engine's per-request fast path (DESIGN.md, "Label resolver"): when every HTTP label
follows from record_request's keyed arguments, the second request of a key records through
the request table in one compiled call. It must give exactly what the general path gives,
on both backends; configs whose labels read more take the general path every time."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats import StatsEngine
from meshstats.engine import _PY_RECORD_REQUEST

LOCAL = {"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default", "LABELS": {"app": "pp"}}
REVIEWS = {"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default", "LABELS": {"app": "reviews"}}
CLUSTER_MD = {
    "filter_metadata": {
        "istio": {"services": [{"host": "reviews.default.svc.cluster.local", "name": "reviews"}]}
    }
}

#: Configs whose HTTP labels read only keyed arguments and the peer: fast.
FAST_CONFIGS: list[dict[str, Any]] = [
    {},
    {"metrics": [{"name": "requests_total", "dimensions": {"host": "request.host"}}]},
    {
        "metrics": [
            {"dimensions": {"klass": "response.code >= 500 ? 'error' : 'ok'"}},
            {"name": "request_bytes", "drop": True},
            {"tags_to_remove": ["grpc_response_status"]},
        ]
    },
    {"metrics": [{"name": "response_bytes", "dimensions": {"response_code": "'fixed'"}}]},
]
#: Configs that read what the key does not carry: general path every time.
SLOW_CONFIGS: list[dict[str, Any]] = [
    {"metrics": [{"dimensions": {"method": "request.method"}}]},
    {"metrics": [{"dimensions": {"path": "request.url_path | 'none'"}}]},
    {"metrics": [{"dimensions": {"mine": "my_attribute | 'none'"}}]},
    {"definitions": [{"name": "sizes_total", "type": "COUNTER", "value": "request.total_size"}]},
]


def engine_for(backend: Backend, config: dict[str, Any], fast: bool = True) -> StatsEngine:
    engine = StatsEngine(LOCAL, config, store=backend.store.Store())
    if not fast:
        engine._fast_http = False
    return engine


def request(engine: StatsEngine, peer: Any, **kw: Any) -> None:
    args: dict[str, Any] = {"response_code": 200, "duration_ms": 12.7, "request_bytes": 420,
            "response_bytes": 3100, "host": "reviews:9080", "method": "GET",
            "path": "/reviews/1"} | kw  # fmt: skip
    engine.record_request(peer, **args)


@pytest.mark.parametrize("config", FAST_CONFIGS)
def test_fast_configs_take_the_table_from_the_second_request(
    backend: Backend, config: dict[str, Any]
) -> None:
    engine = engine_for(backend, config)
    peer = engine.peer("outbound", REVIEWS, cluster_metadata=CLUSTER_MD)
    for code in (200, 200, 503, 200, 503):
        request(engine, peer, response_code=code)
    assert engine._request_tables.hits == 3  # every request after the first of its code
    general = engine_for(backend, config, fast=False)
    peer = general.peer("outbound", REVIEWS, cluster_metadata=CLUSTER_MD)
    for code in (200, 200, 503, 200, 503):
        request(general, peer, response_code=code)
    assert engine.render() == general.render()


@pytest.mark.parametrize("config", SLOW_CONFIGS)
def test_other_configs_resolve_every_request(backend: Backend, config: dict[str, Any]) -> None:
    engine = engine_for(backend, config)
    peer = engine.peer("outbound", REVIEWS)
    for _ in range(3):
        request(engine, peer)
    assert peer._requests is None  # no table was ever made
    assert engine._request_tables.hits == 0
    assert engine.cache_stats()["series_hits"] >= 2  # the general path's label cache


def test_request_attributes_always_take_the_general_path(backend: Backend) -> None:
    engine = engine_for(backend, {})
    peer = engine.peer("outbound", REVIEWS)
    request(engine, peer)
    request(engine, peer, attributes={"request.id": "5f3a"})  # read by no label
    request(engine, peer)
    stats = engine.cache_stats()
    assert stats["series_hits"] == 2 and engine._request_tables.hits == 1


def test_a_duration_first_missing_is_resolved_when_it_comes(backend: Backend) -> None:
    engine = engine_for(backend, {})
    peer = engine.peer("outbound", REVIEWS)
    request(engine, peer, duration_ms=None)  # no duration series yet
    request(engine, peer, duration_ms=None)  # fast: nothing to observe
    request(engine, peer, duration_ms=7)  # the block lacks it: general path, then kept
    request(engine, peer, duration_ms=8)  # fast again
    assert engine._request_tables.hits == 2
    text = engine.render().decode()
    assert 'istio_request_duration_milliseconds_count{reporter="source"' in text
    assert "istio_request_duration_milliseconds_sum{" in text and "} 15\n" in text


# -- differential: fast path == general path, on both backends ------------------------------

# A few keys, then many requests drawn from them, so that most requests repeat a key (and
# go through the table) while their sizes and durations vary.
keyed_st = st.fixed_dictionaries(
    {
        "response_code": st.sampled_from([200, 404, 503, 0]),
        "host": st.sampled_from([None, "", "reviews:9080", "ratings", "10.0.0.1:80"]),
        "response_flags": st.sampled_from([None, 0, 0x20, "UF", "UH,UF", ["DC"]]),
        "grpc_status": st.sampled_from([None, 0, 14]),
        "content_type": st.sampled_from([None, "application/grpc", "text/html"]),
    }
)
values_st = st.fixed_dictionaries(
    {
        "duration_ms": st.one_of(
            st.none(), st.floats(-1, 10**6, allow_nan=False), st.integers(0, 10**5)
        ),
        "request_bytes": st.integers(0, 10**7),
        "response_bytes": st.one_of(st.integers(0, 10**7), st.floats(0, 1e9)),
    }
)
requests_st = st.lists(keyed_st, min_size=1, max_size=4).flatmap(
    lambda keys: st.lists(
        st.tuples(st.sampled_from(keys), values_st).map(lambda kv: kv[0] | kv[1]),
        min_size=1,
        max_size=30,
    )
)


def replay(
    backend: Backend,
    config: dict[str, Any],
    reqs: list[Any],
    fast: bool,
    method: Callable[..., None] | None = None,
) -> bytes:
    """What ``reqs`` render to; ``method``: record with it instead of the engine's own
    ``record_request`` (called as an unbound method)."""
    engine = engine_for(backend, config, fast)
    peers = [
        engine.peer("outbound", REVIEWS, cluster_metadata=CLUSTER_MD),
        engine.peer("inbound", REVIEWS, peer_principal="spiffe://cluster.local/ns/x/sa/y"),
    ]
    for i, kw in enumerate(reqs):
        if method is None:
            engine.record_request(peers[i % 2], **kw)
        else:
            method(engine, peers[i % 2], **kw)
    return bytes(engine.render())


@pytest.mark.c_extension
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FAST_CONFIGS + SLOW_CONFIGS[:1]), requests_st)
def test_fast_and_general_paths_agree_on_both_backends(
    c_backend: Backend, py_backend: Backend, config: dict[str, Any], reqs: list[Any]
) -> None:
    want = replay(py_backend, config, reqs, fast=False)
    assert replay(py_backend, config, reqs, fast=True) == want
    assert replay(c_backend, config, reqs, fast=True) == want
    assert replay(c_backend, config, reqs, fast=False) == want


@pytest.mark.c_extension
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FAST_CONFIGS + SLOW_CONFIGS[:1]), requests_st)
def test_the_compiled_record_request_is_the_python_one(
    c_backend: Backend, py_backend: Backend, config: dict[str, Any], reqs: list[Any]
) -> None:
    # With the extension built, StatsEngine.record_request is _requests_c.record_request;
    # engine.py's Python method runs only under MESHSTATS_NO_EXTENSIONS. Both stores: the
    # compiled method calls a pure store's tables through their Python API.
    from meshstats import _requests_c

    assert StatsEngine.record_request is _requests_c.record_request
    for backend in (c_backend, py_backend):
        want = replay(backend, config, reqs, fast=True, method=_PY_RECORD_REQUEST)
        assert replay(backend, config, reqs, fast=True) == want


@pytest.mark.c_extension
def test_the_compiled_record_request_raises_what_the_python_one_does(
    c_backend: Backend,
) -> None:
    from meshstats import _requests_c

    bad: list[dict[str, Any]] = [
        {"duration_ms": math.nan},  # the general path's ValueError
        {"nonsense": 1},  # an unknown keyword
        {"response_code": "200"},  # not keyable: the general path decides
    ]
    for kw in bad:
        errors: list[type[Exception] | None] = []
        for method in (_PY_RECORD_REQUEST, _requests_c.record_request):
            engine = engine_for(c_backend, {})
            peer = engine.peer("outbound", REVIEWS)
            method(engine, peer, response_code=200, duration_ms=1.0)  # the key's table
            try:
                method(engine, peer, **({"response_code": 200} | kw))
            except Exception as exc:  # noqa: BLE001 - compared, not handled
                errors.append(type(exc))
            else:
                errors.append(None)
        assert errors[0] == errors[1], kw


@pytest.mark.c_extension
def test_the_compiled_record_request_follows_the_peer_type(c_backend: Backend) -> None:
    # It reads the table from PeerContext's slot while the type is unchanged: a subclass,
    # and a class changed after the slot was read, must give what the attribute gives.
    from meshstats.labels import PeerContext

    class Peer(PeerContext):
        __slots__ = ()

    engine = engine_for(c_backend, {})
    plain, sub = engine.peer("outbound", REVIEWS), engine.peer("inbound", REVIEWS)
    sub.__class__ = Peer
    for _ in range(3):  # the types alternate: each lookup replaces the other's
        request(engine, plain)
        request(engine, sub)
    assert engine._request_tables.hits == 4
    # No table through the attribute now (and none kept): the general path.
    slot = "_requests"  # (through setattr: mypy refuses a class attribute over a slot)
    setattr(Peer, slot, property(lambda self: None, lambda self, value: None))
    request(engine, sub)
    assert engine._request_tables.hits == 4
    delattr(Peer, slot)
    request(engine, sub)  # the slot again
    request(engine, plain)
    assert engine._request_tables.hits == 6
    text = engine.render().decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("istio_requests_total{")
    )
    assert total == 9


def test_nan_duration_raises_on_both_paths(backend: Backend) -> None:
    engine = engine_for(backend, {})
    peer = engine.peer("outbound", REVIEWS)
    request(engine, peer)
    for _ in range(2):  # the table refuses it, the general path says what is wrong
        with pytest.raises(ValueError):
            request(engine, peer, duration_ms=math.nan)


# -- a gRPC call: messages and request in one block ----------------------------------------

grpc_call_st = st.fixed_dictionaries(
    {
        "response_code": st.sampled_from([200, 503]),
        "host": st.sampled_from([None, "reviews:9080"]),
        "response_flags": st.sampled_from([None, "DC"]),
        "grpc_status": st.sampled_from([0, 14]),
        "request_messages": st.integers(0, 3),
        "response_messages": st.integers(0, 3),
        "duration_ms": st.one_of(st.none(), st.floats(0, 10**4)),
        "request_bytes": st.integers(0, 10**5),
        "response_bytes": st.integers(0, 10**5),
        # how it is recorded: in one call, or as its two parts (a plain record_request
        # on the same key keeps a block without the message series)
        "how": st.sampled_from(["call", "call", "parts"]),
    }
)


def replay_calls(backend: Backend, calls: list[dict[str, Any]], whole: bool, fast: bool) -> bytes:
    engine = engine_for(backend, {}, fast)
    peer = engine.peer("inbound", REVIEWS, peer_principal="spiffe://cluster.local/ns/x/sa/y")
    for kw in calls:
        kw = dict(kw)
        messages = kw.pop("request_messages"), kw.pop("response_messages")
        if kw.pop("how") == "call" and whole:
            engine.record_grpc_call(
                peer, request_messages=messages[0], response_messages=messages[1], path="/a/B",
                **kw,
            )  # fmt: skip
        else:
            engine.record_grpc_messages(peer, *messages, host=kw["host"])
            engine.record_request(peer, protocol="grpc", method="POST", path="/a/B", **kw)
    return bytes(engine.render())


@pytest.mark.c_extension
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(grpc_call_st, min_size=1, max_size=20))
def test_a_grpc_call_in_one_block_is_its_two_parts(
    c_backend: Backend, py_backend: Backend, calls: list[dict[str, Any]]
) -> None:
    want = replay_calls(py_backend, calls, whole=False, fast=False)
    for backend in (c_backend, py_backend):
        assert replay_calls(backend, calls, whole=True, fast=True) == want
        assert replay_calls(backend, calls, whole=True, fast=False) == want


def test_a_grpc_call_takes_one_table_record_from_the_second_call(backend: Backend) -> None:
    engine = engine_for(backend, {})
    peer = engine.peer("inbound", REVIEWS)
    kw: dict[str, Any] = {"grpc_status": 0, "duration_ms": 3.0, "request_bytes": 40,
                          "response_bytes": 90, "request_messages": 1,
                          "response_messages": 1}  # fmt: skip
    for _ in range(3):
        engine.record_grpc_call(peer, **kw)
    assert engine._request_tables.hits == 2
    text = engine.render().decode()
    for family in ("istio_request_messages_total", "istio_response_messages_total"):
        assert f"{family}{{" in text and text.split(f"{family}{{")[1].split("\n")[0].endswith(" 3")
