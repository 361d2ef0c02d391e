"""The engine's peer-context cache on both backends: what a hit is keyed on, least recently
used eviction, the build call on a miss, and that both implementations agree with a model."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats import StatsEngine


class Recorder:
    """A build function that remembers its calls and returns a fresh object each time."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> list[Any]:
        self.calls.append(args)
        return [len(self.calls)]


def test_a_miss_builds_with_every_argument_in_order(backend: Backend) -> None:
    build = Recorder()
    cache = backend.peer_cache.PeerCache(build, 4)
    md, cmd, umd, attrs = {"NAME": "a"}, {"c": 1}, {"NAME": "u"}, {"x": 1}
    ctx = cache.peer(
        "outbound", md, peer_principal="p", cluster_name="c", cluster_metadata=cmd,
        route_name="r", upstream_metadata=umd, upstream_principal="up", attributes=attrs,
        peer_address="10.0.0.1", cache_key="k",
    )  # fmt: skip
    assert build.calls == [("outbound", md, "p", "c", cmd, "r", umd, "up", attrs, "10.0.0.1")]
    assert ctx == [1] and (cache.hits, cache.misses, len(cache)) == (0, 1, 1)


def test_without_a_cache_key_nothing_is_kept_or_counted(backend: Backend) -> None:
    build = Recorder()
    cache = backend.peer_cache.PeerCache(build, 4)
    first, second = cache.peer("inbound", None), cache.peer("inbound", None)
    assert first is not second and len(build.calls) == 2
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)


@pytest.mark.parametrize(
    "other",
    [
        {"reporter": "inbound"},
        {"cache_key": "k2"},
        {"peer_principal": "spiffe://other"},
        {"cluster_name": "outbound|9080||other"},
        {"route_name": "other"},
        {"upstream_principal": "spiffe://up"},
    ],
)
def test_each_selecting_argument_is_part_of_the_key(
    backend: Backend, other: dict[str, Any]
) -> None:
    cache = backend.peer_cache.PeerCache(Recorder(), 8)
    base: dict[str, Any] = {"reporter": "outbound", "cache_key": "k"}
    first = cache.peer(**base)
    assert cache.peer(**base) is first
    assert cache.peer(**{**base, **other}) is not first
    assert (cache.hits, cache.misses) == (1, 2)


def test_metadata_and_attributes_are_not_compared_on_a_hit(backend: Backend) -> None:
    """The cache key stands for the metadata, as x-envoy-peer-metadata-id does in Istio."""
    cache = backend.peer_cache.PeerCache(Recorder(), 8)
    first = cache.peer("inbound", {"NAME": "a"}, cache_key="k", attributes={"x": 1})
    assert cache.peer("inbound", {"NAME": "b"}, cache_key="k", attributes={"x": 2}) is first


def test_least_recently_used_is_evicted(backend: Backend) -> None:
    build = Recorder()
    cache = backend.peer_cache.PeerCache(build, 2)
    a = cache.peer("inbound", cache_key="a")
    cache.peer("inbound", cache_key="b")
    assert cache.peer("inbound", cache_key="a") is a  # a is now the youngest
    cache.peer("inbound", cache_key="c")  # evicts b
    assert len(cache) == 2
    assert cache.peer("inbound", cache_key="a") is a
    cache.peer("inbound", cache_key="b")
    assert len(build.calls) == 4  # a, b, c, b again


def test_clear_forgets_contexts_and_keeps_counts(backend: Backend) -> None:
    cache = backend.peer_cache.PeerCache(Recorder(), 2)
    a = cache.peer("inbound", cache_key="a")
    cache.peer("inbound", cache_key="a")
    cache.clear()
    assert len(cache) == 0 and cache.peer("inbound", cache_key="a") is not a
    assert (cache.hits, cache.misses) == (1, 2)


def test_a_failing_build_keeps_nothing(backend: Backend) -> None:
    def build(*args: Any) -> Any:
        raise ValueError("bad metadata")

    cache = backend.peer_cache.PeerCache(build, 2)
    with pytest.raises(ValueError, match="bad metadata"):
        cache.peer("inbound", {"NAME": 1}, cache_key="a")
    assert len(cache) == 0 and cache.misses == 1


def test_the_engine_answers_hits_from_the_cache(backend: Backend) -> None:
    engine = StatsEngine({"WORKLOAD_NAME": "w"}, store=backend.store.Store())
    first = engine.peer("inbound", {"WORKLOAD_NAME": "a"}, cache_key="a")
    assert engine.peer("inbound", {"WORKLOAD_NAME": "a"}, cache_key="a") is first
    assert StatsEngine.peer(engine, "inbound", cache_key="a") is first  # the method delegates
    assert (engine.peer_cache_hits, engine.peer_cache_misses) == (2, 1)


KEYS = st.lists(st.tuples(st.sampled_from(["inbound", "outbound"]), st.integers(0, 6)), max_size=60)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=KEYS, capacity=st.integers(0, 5))
@pytest.mark.c_extension
def test_both_caches_match_an_lru_model(
    c_backend: Backend, py_backend: Backend, calls: list[tuple[str, int]], capacity: int
) -> None:
    model: OrderedDict[tuple[str, int], int] = OrderedDict()
    model_hits = 0
    caches = [b.peer_cache.PeerCache(Recorder(), capacity) for b in (c_backend, py_backend)]
    for reporter, key in calls:
        hit = (reporter, key) in model
        if hit:
            model.move_to_end((reporter, key))
            model_hits += 1
        else:
            model[(reporter, key)] = 0
            if len(model) > capacity:
                model.popitem(last=False)
        for cache in caches:
            before = cache.hits
            cache.peer(reporter, cache_key=key)
            assert (cache.hits > before) == hit
    for cache in caches:
        assert (cache.hits, len(cache)) == (model_hits, len(model))
