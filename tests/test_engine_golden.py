"""Golden label sets: every label value written out, for the cases Istio's own goldens pin down
(istio/proxy ``testdata/metric/*.yaml.tmpl``: client/server requests, host header fallback,
customized config, TCP with and without exchange, gRPC messages, istio_build)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshstats.config import StatsConfig
from meshstats.engine import StatsEngine
from meshstats.standard_metrics import HTTP_LABELS, PEER_LABELS, TCP_LABELS

PRODUCTPAGE = {
    "NAME": "productpage-v1-84975bc778-pxz2w",
    "NAMESPACE": "default",
    "WORKLOAD_NAME": "productpage-v1",
    "CLUSTER_ID": "Kubernetes",
    "ISTIO_VERSION": "1.24.0",
    "LABELS": {
        "app": "productpage",
        "version": "v1",
        "service.istio.io/canonical-name": "productpage",
        "service.istio.io/canonical-revision": "v1",
    },
}
REVIEWS = {
    "NAME": "reviews-v2-5b667bcbf8-8hxlj",
    "NAMESPACE": "default",
    "WORKLOAD_NAME": "reviews-v2",
    "CLUSTER_ID": "Kubernetes",
    "ISTIO_VERSION": "1.24.0",
    "LABELS": {
        "app.kubernetes.io/name": "reviews",
        "app": "reviews-legacy",  # app.kubernetes.io/name wins for a peer (§3.2)
        "version": "v2",
        "service.istio.io/canonical-name": "reviews",
        "service.istio.io/canonical-revision": "v2",
    },
}
PP_SAN = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS_SAN = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
REVIEWS_CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"
REVIEWS_CLUSTER_MD = {
    "filter_metadata": {
        "istio": {
            "services": [
                {
                    "host": "reviews.default.svc.cluster.local",
                    "name": "reviews",
                    "namespace": "default",
                }
            ]
        }
    }
}


def samples(engine: StatsEngine, name: str) -> list[dict[str, str]]:
    """Label sets (with the value under ``__value__``) of one metric's samples."""
    out = []
    for family in text_string_to_metric_families(engine.render().decode()):
        for s in family.samples:
            if s.name == name:
                out.append({**s.labels, "__value__": repr(float(s.value))})
    return out


def one(engine: StatsEngine, name: str) -> dict[str, str]:
    found = samples(engine, name)
    assert len(found) == 1, found
    return found[0]


def label_order(engine: StatsEngine, name: str) -> list[str]:
    line = next(ln for ln in engine.render().decode().splitlines() if ln.startswith(name + "{"))
    return [part.split("=", 1)[0] for part in line[len(name) + 1 : line.index("}")].split('",')]


@pytest.fixture(params=["fast", "general"])
def make(backend: Any, request: pytest.FixtureRequest) -> Any:
    """Engines on each backend, with the per-request fast path on (where the config allows
    it) and off: the goldens hold on both paths."""

    def make_engine(local: dict[str, Any], config: Any = None, **kw: Any) -> StatsEngine:
        engine = StatsEngine(local, config, store=backend.store.Store(), **kw)
        if request.param == "general":
            engine._fast_http = False
        return engine

    return make_engine


def client_expected(**overrides: str) -> dict[str, str]:
    expected = {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_workload_namespace": "default",
        "source_principal": PP_SAN,
        "source_app": "productpage",
        "source_version": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "default",
        "destination_principal": REVIEWS_SAN,
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "unknown",
    }
    expected.update(overrides)
    return expected


def test_default_http_client(make: Any) -> None:
    engine = make(PRODUCTPAGE, local_principal=PP_SAN)
    peer = engine.peer(
        "outbound",
        REVIEWS,
        peer_principal=REVIEWS_SAN,
        cluster_name=REVIEWS_CLUSTER,
        cluster_metadata=REVIEWS_CLUSTER_MD,
    )
    for _ in range(3):
        engine.record_request(
            peer,
            response_code=200,
            duration_ms=12.7,
            request_bytes=310,
            response_bytes=4200,
            host="reviews:9080",
        )
    got = one(engine, "istio_requests_total")
    assert got == {**client_expected(), "__value__": "3.0"}
    assert label_order(engine, "istio_requests_total") == list(HTTP_LABELS)
    # 12.7 ms is truncated to 12 (Envoy records whole milliseconds): three in le="25"
    buckets = {
        s["le"]: s["__value__"]
        for s in samples(engine, "istio_request_duration_milliseconds_bucket")
    }
    assert buckets["10"] == "0.0" and buckets["25"] == "3.0" and buckets["+Inf"] == "3.0"
    assert one(engine, "istio_request_duration_milliseconds_sum")["__value__"] == "36.0"
    assert one(engine, "istio_request_bytes_sum")["__value__"] == "930.0"
    assert one(engine, "istio_response_bytes_count")["__value__"] == "3.0"


def test_default_http_server(make: Any) -> None:
    engine = make(REVIEWS, local_principal=REVIEWS_SAN)
    peer = engine.peer("inbound", PRODUCTPAGE, peer_principal=PP_SAN)
    engine.record_request(
        peer, response_code=503, duration_ms=3, response_flags=["UF", "UH"], host="reviews:9080"
    )
    got = one(engine, "istio_requests_total")
    assert got == {
        "reporter": "destination",
        "source_workload": "productpage-v1",
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_workload_namespace": "default",
        "source_principal": PP_SAN,
        "source_app": "productpage",
        "source_version": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "default",
        "destination_principal": REVIEWS_SAN,
        # the local node's own LABELS.app, verbatim: the app.kubernetes.io rule is for peers
        "destination_app": "reviews-legacy",
        "destination_version": "v2",
        # inbound: no host-header fallback, no cluster metadata -> the local canonical service
        "destination_service": "reviews",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "503",
        "grpc_response_status": "",
        "response_flags": "UH,UF",
        "connection_security_policy": "mutual_tls",
        "__value__": "1.0",
    }


def test_unknown_peer_on_server(make: Any) -> None:
    engine = make(REVIEWS)  # no certificates at all: plaintext
    peer = engine.peer("inbound", None)
    engine.record_request(peer, response_code=200, duration_ms=1)
    got = one(engine, "istio_requests_total")
    for name in (
        "source_workload",
        "source_canonical_service",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_principal",
    ):
        assert got[name] == "unknown", name
    assert got["source_canonical_revision"] == "latest"
    assert got["connection_security_policy"] == "none"
    assert got["destination_workload"] == "reviews-v2"


def test_host_header_fallback_on_and_off(make: Any) -> None:
    on = make(PRODUCTPAGE)
    peer = on.peer("outbound", None, cluster_name="outbound|9080||127.0.0.1")
    on.record_request(peer, response_code=200, duration_ms=1, host="127.0.0.1:9080")
    got = one(on, "istio_requests_total")
    assert got["destination_service"] == got["destination_service_name"] == "127.0.0.1:9080"
    assert got["destination_service_namespace"] == "unknown"
    assert got["destination_workload"] == "unknown"
    assert got["destination_canonical_revision"] == "latest"

    off = make(PRODUCTPAGE, {"disable_host_header_fallback": True})
    peer = off.peer("outbound", None)
    off.record_request(peer, response_code=200, duration_ms=1, host="127.0.0.1:9080")
    got = one(off, "istio_requests_total")
    assert got["destination_service"] == got["destination_service_name"] == "unknown"


def test_cluster_metadata_beats_host_header(make: Any) -> None:
    engine = make(PRODUCTPAGE)
    peer = engine.peer(
        "outbound",
        REVIEWS,
        cluster_name=REVIEWS_CLUSTER,
        cluster_metadata={
            "filter_metadata": {"istio": {"services": [{"host": "reviews.prod.svc.cluster.local"}]}}
        },
    )
    engine.record_request(peer, response_code=200, duration_ms=1, host="my-alias:80")
    got = one(engine, "istio_requests_total")
    assert got["destination_service"] == "reviews.prod.svc.cluster.local"
    assert got["destination_service_name"] == "reviews"  # host up to the first dot
    # no namespace in the cluster metadata: the peer's namespace
    assert got["destination_service_namespace"] == "default"


@pytest.mark.parametrize(
    ("route", "cluster", "name"),
    [
        ("block_all", "BlackHoleCluster", "BlackHoleCluster"),
        ("allow_any", "PassthroughCluster", "PassthroughCluster"),
        (None, "BlackHoleCluster", "BlackHoleCluster"),
        (None, "PassthroughCluster", "PassthroughCluster"),
        (None, "InboundPassthroughClusterIpv4", "InboundPassthroughClusterIpv4"),
    ],
)
def test_black_hole_and_passthrough(make: Any, route: str | None, cluster: str, name: str) -> None:
    engine = make(PRODUCTPAGE)
    peer = engine.peer("outbound", None, route_name=route, cluster_name=cluster)
    engine.record_request(
        peer, response_code=502 if "Black" in name else 200, duration_ms=1, host="api.example.com"
    )
    got = one(engine, "istio_requests_total")
    assert got["destination_service_name"] == name
    assert got["destination_service"] == "api.example.com"


def test_a_removed_tag_set_again_comes_back_in_its_place(make: Any) -> None:
    """Istio writes one map entry per tag: removing a standard tag and then setting it in a
    later entry restores it, in the standard order, with the new expression."""
    engine = make(
        PRODUCTPAGE,
        {
            "metrics": [
                {"name": "requests_total", "tags_to_remove": ["response_flags", "source_app"]},
                {"name": "requests_total", "dimensions": {"response_flags": "'restored'"}},
            ]
        },
    )
    peer = engine.peer("outbound", REVIEWS, cluster_metadata=REVIEWS_CLUSTER_MD)
    engine.record_request(peer, response_code=200, duration_ms=1)
    got = one(engine, "istio_requests_total")
    assert got["response_flags"] == "restored"
    assert "source_app" not in got  # removed and never set again
    order = label_order(engine, "istio_requests_total")
    standard = [t for t in label_order(engine, "istio_request_bytes_count") if t != "source_app"]
    assert order == standard


def test_attributes_set_per_request_are_read_per_request(make: Any) -> None:
    """Istio's request classification recipe reads filter state the attribute-generation
    filter writes per request; any attribute passed with the request is read per request,
    also by a label that otherwise reads only the peer (the override wins for that event)."""
    engine = make(
        PRODUCTPAGE,
        {
            "metrics": [
                {
                    "name": "requests_total",
                    "dimensions": {
                        "response_class": "filter_state['wasm.istio_responseClass']",
                        "source_workload": "source.workload.name",
                    },
                }
            ]
        },
    )
    peer = engine.peer("outbound", REVIEWS, cluster_metadata=REVIEWS_CLUSTER_MD)
    for code, klass in ((200, "2xx"), (503, "5xx"), (201, "2xx")):
        engine.record_request(
            peer,
            response_code=code,
            duration_ms=1,
            attributes={"filter_state": {"wasm.istio_responseClass": klass}},
        )
    engine.record_request(peer, response_code=200, duration_ms=1)  # no class: unknown
    engine.record_request(
        peer, response_code=200, duration_ms=1, attributes={"source.workload.name": "batch"}
    )
    got = {
        (s["response_class"], s["response_code"], s["source_workload"]): s["__value__"]
        for s in samples(engine, "istio_requests_total")
    }
    assert got == {
        ("2xx", "200", "productpage-v1"): "1.0",
        ("2xx", "201", "productpage-v1"): "1.0",
        ("5xx", "503", "productpage-v1"): "1.0",
        ("unknown", "200", "productpage-v1"): "1.0",
        ("unknown", "200", "batch"): "1.0",
    }


def test_customized_config(make: Any) -> None:
    config = {
        "metrics": [
            {
                "name": "requests_total",
                "dimensions": {
                    "request_host": "request.host",  # appended
                    "a_path": "request.url_path",  # appended, sorted before request_host
                    "source_app": "'x' +",  # parse error: removes the standard tag
                    "destination_version": "request.headers['x-version']",  # runtime failure
                    "source_workload": "source.workload.name + '-custom'",  # override in place
                },
                "tags_to_remove": ["grpc_response_status", "not_a_standard_tag"],
            },
            {"name": "request_bytes", "drop": True},
            {"dimensions": {"zone": "'eu-1'"}},  # global: every metric, custom ones too
        ],
        "definitions": [
            {"name": "requests_bytes_total", "type": "COUNTER", "value": "request.total_size"},
            {"name": "requests_total", "type": "COUNTER", "value": "1"},  # standard: ignored
            {"name": "broken", "type": "COUNTER", "value": "1 +"},  # does not parse: ignored
        ],
    }
    engine = make(PRODUCTPAGE, config)
    peer = engine.peer("outbound", REVIEWS, cluster_metadata=REVIEWS_CLUSTER_MD)
    engine.record_request(
        peer,
        response_code=200,
        duration_ms=5,
        request_bytes=77,
        host="reviews:9080",
        path="/reviews/1?x=1",
    )
    got = one(engine, "istio_requests_total")
    expected = client_expected(
        source_workload="productpage-v1-custom",
        destination_version="unknown",
        source_principal="unknown",
        destination_principal="unknown",
        request_protocol="http",
    )
    del expected["source_app"], expected["grpc_response_status"]
    expected |= {"a_path": "/reviews/1", "request_host": "reviews:9080", "zone": "eu-1"}
    assert got == {**expected, "__value__": "1.0"}
    order = label_order(engine, "istio_requests_total")
    assert order[-3:] == ["a_path", "request_host", "zone"]
    assert "source_app" not in order and order[1] == "source_workload"
    assert samples(engine, "istio_request_bytes_count") == []
    assert one(engine, "istio_requests_bytes_total") == {"zone": "eu-1", "__value__": "77.0"}
    assert samples(engine, "istio_broken_total") == []
    assert any("source_app" in w for w in engine.config_warnings)
    assert any("definitions[2]" in w for w in engine.config_warnings)
    # the response_bytes metric took only the global dimension on top of the defaults
    assert one(engine, "istio_response_bytes_count")["zone"] == "eu-1"
    assert "grpc_response_status" in one(engine, "istio_response_bytes_count")


def test_tcp_with_exchange(make: Any) -> None:
    engine = make(REVIEWS, local_principal=REVIEWS_SAN)
    conn = engine.tcp_connection()
    conn.add_bytes(sent=100, received=40)
    assert engine.report_tcp() == 0  # peer not known yet: nothing reported, as Istio waits
    conn.set_peer(engine.peer("inbound", PRODUCTPAGE, peer_principal=PP_SAN))
    assert engine.report_tcp() == 1
    conn.add_bytes(sent=5, received=7)
    conn.close()
    opened = one(engine, "istio_tcp_connections_opened_total")
    assert opened["__value__"] == "1.0"
    assert label_order(engine, "istio_tcp_connections_opened_total") == list(TCP_LABELS)
    assert opened["request_protocol"] == "tcp"
    assert opened["connection_security_policy"] == "mutual_tls"
    assert opened["source_workload"] == "productpage-v1"
    assert opened["response_flags"] == "-"
    assert one(engine, "istio_tcp_connections_closed_total")["__value__"] == "1.0"
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "105.0"
    assert one(engine, "istio_tcp_received_bytes_total")["__value__"] == "47.0"


def test_tcp_client_reads_the_upstream_peer_in_custom_dimensions(make: Any) -> None:
    """Kept on purpose (README): Istio's TCP client evaluates custom dimensions against the
    downstream connection and prints unknown for filter_state.upstream_peer.*; meshstats
    gives the peer's value there, as Istio's HTTP client does."""
    engine = make(
        PRODUCTPAGE,
        {"metrics": [{"dimensions": {"up": "filter_state.upstream_peer.workload | 'none'"}}]},
    )
    conn = engine.tcp_connection(engine.peer("outbound", REVIEWS), reporter="outbound")
    conn.add_bytes(sent=1)
    conn.close()
    assert one(engine, "istio_tcp_sent_bytes_total")["up"] == "reviews-v2"


@pytest.mark.parametrize(
    ("dimension", "reporter", "expected"),
    [
        ("downstream_peer.workload", "inbound", "reviews-v2"),
        ("filter_state.downstream_peer.app", "inbound", "reviews"),
        ("upstream_peer.revision", "outbound", "v2"),
        ("source.labels['app.kubernetes.io/name']", "inbound", "reviews"),
        ("destination.labels.version", "outbound", "v2"),
    ],
)
def test_peer_state_and_labels_are_there_when_a_dimension_reads_them(
    make: Any, dimension: str, reporter: str, expected: str
) -> None:
    """A new peer's context leaves out the peers' filter state and label maps unless an
    expression names them (the default dimensions do not): whoever names them gets them."""
    engine = make(PRODUCTPAGE, {"metrics": [{"dimensions": {"x": dimension}}]})
    engine.record_request(engine.peer(reporter, REVIEWS), response_code=200)
    assert one(engine, "istio_requests_total")["x"] == expected
    default = make(PRODUCTPAGE).peer(reporter, REVIEWS).attrs
    side, state = ("source", "downstream") if reporter == "inbound" else ("destination", "upstream")
    assert {f"{side}.labels", f"{state}_peer", f"filter_state.{state}_peer"}.isdisjoint(default)
    assert default[f"{side}.workload.name"] == "reviews-v2"  # the rest of the peer is there


def test_tcp_without_exchange(make: Any) -> None:
    """No ALPN match: the peer is never learnt; labels say unknown, reported at close."""
    engine = make(PRODUCTPAGE)
    conn = engine.tcp_connection()
    conn.add_bytes(sent=9, received=3)
    conn.close()
    got = one(engine, "istio_tcp_connections_opened_total")
    assert got["source_workload"] == "unknown"
    assert got["destination_workload"] == "productpage-v1"
    assert got["connection_security_policy"] == "none"
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "9.0"


def test_grpc_message_counters(make: Any) -> None:
    engine = make(PRODUCTPAGE, local_principal=PP_SAN)
    peer = engine.peer(
        "outbound", REVIEWS, peer_principal=REVIEWS_SAN, cluster_metadata=REVIEWS_CLUSTER_MD
    )
    engine.record_grpc_messages(peer, 3, 5)
    engine.record_grpc_messages(peer, 1, 0)
    req = one(engine, "istio_request_messages_total")
    assert req["__value__"] == "4.0"
    assert label_order(engine, "istio_request_messages_total") == list(PEER_LABELS)
    expected = client_expected()
    assert {k: v for k, v in req.items() if k != "__value__"} == {
        k: expected[k] for k in PEER_LABELS
    }
    assert one(engine, "istio_response_messages_total")["__value__"] == "5.0"


def test_counters_added_with_zero_show_at_zero(make: Any) -> None:
    """Envoy's addCounter(0) creates the stat and marks it used: Istio shows a connection's
    byte counters and a stream's message counters at 0 when nothing moved, while opened and
    closed are only ever added with 1 (closed at the end)."""
    engine = make(REVIEWS_NODE_FOR_ZERO)
    conn = engine.tcp_connection(engine.peer("inbound", PRODUCTPAGE), reporter="inbound")
    conn.add_bytes(sent=0, received=7)
    assert conn.flush()
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "0.0"
    assert one(engine, "istio_tcp_received_bytes_total")["__value__"] == "7.0"
    assert one(engine, "istio_tcp_connections_opened_total")["__value__"] == "1.0"
    assert samples(engine, "istio_tcp_connections_closed_total") == []
    assert conn.flush()  # nothing new: opened is not added again
    assert one(engine, "istio_tcp_connections_opened_total")["__value__"] == "1.0"
    conn.close()
    assert one(engine, "istio_tcp_connections_closed_total")["__value__"] == "1.0"
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "0.0"
    engine.record_grpc_messages(engine.peer("inbound", PRODUCTPAGE), 0, 3)
    assert one(engine, "istio_request_messages_total")["__value__"] == "0.0"
    assert one(engine, "istio_response_messages_total")["__value__"] == "3.0"


REVIEWS_NODE_FOR_ZERO = {**REVIEWS, "LABELS": {"app": "reviews", "version": "v2"}}


def test_grpc_request(make: Any) -> None:
    engine = make(PRODUCTPAGE)
    peer = engine.peer("outbound", REVIEWS, cluster_metadata=REVIEWS_CLUSTER_MD)
    engine.record_request(
        peer,
        response_code=200,
        grpc_status=14,
        duration_ms=2,
        content_type="application/grpc+proto",
    )
    got = one(engine, "istio_requests_total")
    assert got["request_protocol"] == "grpc"
    assert got["grpc_response_status"] == "14"


def test_istio_build(make: Any) -> None:
    assert one(make(PRODUCTPAGE), "istio_build") == {
        "component": "proxy",
        "tag": "1.24.0",
        "__value__": "1.0",
    }
    assert one(make({"WORKLOAD_NAME": "x"}), "istio_build")["tag"] == "unknown"


def test_series_cache_counts_hits(make: Any) -> None:
    engine = make(PRODUCTPAGE)
    peer = engine.peer("outbound", REVIEWS, cache_key="reviews-v2~id")
    assert engine.peer("outbound", REVIEWS, cache_key="reviews-v2~id") is peer
    for code in (200, 200, 200, 503):
        engine.record_request(peer, response_code=code, duration_ms=1)
    stats = engine.cache_stats()
    assert stats["series_misses"] == 2 and stats["series_hits"] == 2
    assert stats["peer_hits"] == 1 and stats["peer_misses"] == 1


def test_peer_cache_is_bounded(make: Any) -> None:
    engine = make(PRODUCTPAGE, {"peer_cache_size": 8})
    for i in range(100):
        engine.peer("outbound", {"WORKLOAD_NAME": f"w{i}"}, cache_key=i)
    assert engine.cache_stats()["peers_cached"] <= 8


def test_peer_cache_is_least_recently_used(make: Any) -> None:
    engine = make(PRODUCTPAGE, {"peer_cache_size": 4})
    first = [engine.peer("outbound", {"WORKLOAD_NAME": f"w{i}"}, cache_key=i) for i in range(4)]
    assert engine.peer("outbound", {"WORKLOAD_NAME": "w0"}, cache_key=0) is first[0]  # in use
    engine.peer("outbound", {"WORKLOAD_NAME": "w4"}, cache_key=4)  # evicts w1, the oldest use
    assert engine.peer("outbound", {"WORKLOAD_NAME": "w0"}, cache_key=0) is first[0]
    assert engine.peer("outbound", {"WORKLOAD_NAME": "w2"}, cache_key=2) is first[2]
    assert engine.peer("outbound", {"WORKLOAD_NAME": "w1"}, cache_key=1) is not first[1]
    assert engine.cache_stats()["peers_cached"] == 4


def test_series_survive_a_peer_context_eviction(make: Any) -> None:
    """A peer evicted from the cache and resolved again finds its series already resolved."""
    engine = make(PRODUCTPAGE, {"peer_cache_size": 1})
    reviews = engine.peer("outbound", REVIEWS, cache_key="reviews")
    engine.record_request(reviews, response_code=200, duration_ms=1)
    misses = engine.cache_stats()["series_misses"]
    engine.peer("outbound", {"WORKLOAD_NAME": "other"}, cache_key="other")  # evicts reviews
    again = engine.peer("outbound", REVIEWS, cache_key="reviews")
    assert again is not reviews
    engine.record_request(again, response_code=200, duration_ms=1)
    assert engine.cache_stats()["series_misses"] == misses  # found, not resolved again
    assert one(engine, "istio_requests_total")["__value__"] == "2.0"


def test_label_values_are_bounded_and_cuts_counted(make: Any) -> None:
    """A peer's 11 KB WORKLOAD_NAME or a client's 11 KB Host cannot make every scrape huge:
    label values are cut to max_label_length with a visible mark, and counted."""
    engine = make(PRODUCTPAGE, {"max_label_length": 64})
    huge = "w" * 11_000
    peer = engine.peer("outbound", {"WORKLOAD_NAME": huge, "NAMESPACE": "default"})
    for _ in range(3):
        engine.record_request(peer, response_code=200, duration_ms=1, host="h" * 11_000)
    got = one(engine, "istio_requests_total")
    assert got["destination_workload"] == "w" * 63 + "…"
    assert got["destination_service"] == "h" * 63 + "…"
    assert got["__value__"] == "3.0"
    assert max(len(line) for line in engine.render().decode().splitlines()) < 64 * 30
    cuts = {
        s["label"]: s["__value__"]
        for s in samples(engine, "meshstats_label_values_truncated_total")
    }
    # Counted when a series is resolved (once per peer, once per new request key), not
    # per request.
    assert cuts == {
        "destination_workload": "1.0",
        "destination_service": "1.0",
        "destination_service_name": "1.0",  # the host fallback names the service too
    }
    assert StatsConfig.parse({}).max_label_length == 512


def test_scrape_is_bounded_by_the_exposition_budget() -> None:
    """Cut values still add up: 300 spoofed peers with three 11 KB metadata fields (cut
    to 512 characters, but each fills several labels) scrape at 47 MB without a budget.
    The config's budget reaches the engine's own store, and past it new label sets fold
    into the overflow series, counted per metric."""
    budget = 300_000
    engine = StatsEngine(PRODUCTPAGE, {"max_exposition_bytes": budget})
    assert engine.store.max_exposition_bytes == budget
    for i in range(300):
        labels = {"app": "a" * 11_000, "version": "v" * 11_000}
        spoofed = {"WORKLOAD_NAME": f"{i}-" + "w" * 11_000, "NAMESPACE": "ns", "LABELS": labels}
        engine.record_request(engine.peer("inbound", spoofed), response_code=200, duration_ms=1)
    # Beyond the budget: HELP/TYPE lines of every family, and the four HTTP metrics'
    # overflow series (67 lines of 25 `__overflow__` values, ~65 KB).
    assert len(engine.render()) <= budget + 100_000
    assert len(engine.render(openmetrics=True)) <= budget + 100_000
    folds = {
        s["metric"]: s["__value__"]
        for s in samples(engine, "meshstats_exposition_budget_overflow_total")
    }
    assert set(folds) == {
        "istio_requests_total",
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    }
    assert StatsEngine(PRODUCTPAGE).store.max_exposition_bytes == 256 * 1024 * 1024


def test_no_truncation_counter_until_something_is_cut(make: Any) -> None:
    engine = make(PRODUCTPAGE)
    engine.record_request(engine.peer("outbound", REVIEWS), response_code=200, duration_ms=1)
    assert b"meshstats_label_values_truncated" not in engine.render()


def test_gateway_reporter(make: Any) -> None:
    engine = make(
        {"WORKLOAD_NAME": "istio-ingressgateway", "NAMESPACE": "istio-system"},
        {"reporter": "SERVER_GATEWAY"},
    )
    peer = engine.peer("inbound", PRODUCTPAGE, upstream_metadata=REVIEWS)
    engine.record_request(peer, response_code=200, duration_ms=1)
    got = one(engine, "istio_requests_total")
    assert got["reporter"] == "waypoint"
    assert got["source_workload"] == "productpage-v1"
    assert got["destination_workload"] == "reviews-v2"
    assert got["destination_principal"] == "unknown"  # nothing trusted said who it is


def test_gateway_service_namespace_has_no_peer_fallback(make: Any) -> None:
    """A waypoint takes destination_service_namespace from the cluster's service metadata
    only, else prints unknown (Istio's ServerGateway branch in istio_stats.cc); the client's
    fallback to the peer's namespace is not a waypoint's."""
    engine = make(
        {"WORKLOAD_NAME": "waypoint", "NAMESPACE": "istio-system"},
        {"reporter": "SERVER_GATEWAY"},
    )
    services = {"filter_metadata": {"istio": {"services": [{"host": "reviews.prod.svc"}]}}}
    peer = engine.peer("inbound", PRODUCTPAGE, upstream_metadata=REVIEWS, cluster_metadata=services)
    engine.record_request(peer, response_code=200, duration_ms=1)
    got = one(engine, "istio_requests_total")
    assert got["destination_service"] == "reviews.prod.svc"
    assert got["destination_workload_namespace"] == "default"  # the upstream peer's
    assert got["destination_service_namespace"] == "unknown"


def test_gateway_destination_principal_from_the_control_plane(make: Any) -> None:
    """A waypoint or gateway learns the destination's identity from workload discovery
    (trusted configuration), and reports it; exchanged headers never set it."""
    engine = make(
        {"WORKLOAD_NAME": "istio-ingressgateway", "NAMESPACE": "istio-system"},
        {"reporter": "SERVER_GATEWAY"},
    )
    peer = engine.peer(
        "inbound",
        PRODUCTPAGE,
        peer_principal=PP_SAN,
        upstream_metadata=REVIEWS,
        upstream_principal=REVIEWS_SAN,
        cache_key="pp",
    )
    engine.record_request(peer, response_code=200, duration_ms=1)
    got = one(engine, "istio_requests_total")
    assert got["destination_principal"] == REVIEWS_SAN
    assert got["source_principal"] == PP_SAN
    other = engine.peer("inbound", PRODUCTPAGE, peer_principal=PP_SAN, cache_key="pp")
    assert other is not peer  # the principal is part of the cache key


def test_connection_attributes_feed_custom_dimensions(make: Any) -> None:
    engine = make(
        REVIEWS,
        {"metrics": [{"name": "requests_total", "dimensions": {"peer_ip": "source.address"}}]},
    )
    peer = engine.peer("inbound", PRODUCTPAGE, attributes={"source.address": "10.1.2.3"})
    engine.record_request(peer, response_code=200, duration_ms=1)
    assert one(engine, "istio_requests_total")["peer_ip"] == "10.1.2.3"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.timing
def test_periodic_tcp_reports_before_close(make: Any) -> None:
    """A long connection shows up every tcp_reporting_duration, before it closes; the
    schedule runs on a fake clock, so what is reported when does not depend on the machine."""
    clock = FakeClock()
    engine = make(REVIEWS, {"tcp_reporting_duration": "20ms"}, clock=clock)
    conn = engine.tcp_connection(engine.peer("inbound", PRODUCTPAGE))
    conn.add_bytes(sent=1000, received=10)
    clock.advance(0.019)
    assert engine.reporting.run_due() == pytest.approx(0.001)  # not due yet: nothing reported
    assert samples(engine, "istio_tcp_sent_bytes_total") == []
    clock.advance(0.001)
    assert engine.reporting.run_due() == pytest.approx(0.020)
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "1000.0"
    assert one(engine, "istio_tcp_connections_opened_total")["__value__"] == "1.0"
    assert samples(engine, "istio_tcp_connections_closed_total") == []
    conn.add_bytes(sent=24)
    clock.advance(0.020)
    engine.reporting.run_due()
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "1024.0"
    assert one(engine, "istio_tcp_connections_opened_total")["__value__"] == "1.0"  # once
    conn.close()
    assert one(engine, "istio_tcp_connections_opened_total")["__value__"] == "1.0"
    assert one(engine, "istio_tcp_connections_closed_total")["__value__"] == "1.0"
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "1024.0"
    assert engine.report_tcp() == 0  # a closed connection is no longer reported


@pytest.mark.timing
def test_idle_series_expiry(make: Any) -> None:
    """Series idle for a whole interval leave the exposition; a new request brings them back
    with their counts continued (Istio's metric expiry, TestStatsExpiry). Each expiry tick is
    an explicit step of a fake clock."""
    clock = FakeClock()
    engine = make(REVIEWS, {"idle_series_expiry": "30ms"}, clock=clock)
    busy = engine.peer("inbound", PRODUCTPAGE)
    idle = engine.peer("inbound", {"WORKLOAD_NAME": "ratings-v1"})
    engine.record_request(busy, response_code=200, duration_ms=1)
    engine.record_request(idle, response_code=200, duration_ms=1)
    clock.advance(0.030)  # first tick: both were recorded since the start, both stay
    engine.reporting.run_due()
    assert len(samples(engine, "istio_requests_total")) == 2
    engine.record_request(busy, response_code=200, duration_ms=1)
    clock.advance(0.029)
    engine.reporting.run_due()  # not due: an interval has not passed
    assert len(samples(engine, "istio_requests_total")) == 2
    clock.advance(0.001)  # second tick: "idle" saw nothing for a whole interval
    engine.reporting.run_due()
    assert one(engine, "istio_requests_total")["source_workload"] == "productpage-v1"
    assert one(engine, "istio_requests_total")["__value__"] == "2.0"
    assert one(engine, "istio_build")["__value__"] == "1.0"  # describes the proxy: never expires
    engine.record_request(idle, response_code=200, duration_ms=1)
    back = [
        s for s in samples(engine, "istio_requests_total") if s["source_workload"] == "ratings-v1"
    ]
    assert back and back[0]["__value__"] == "2.0"  # continued, not restarted


@pytest.mark.timing
def test_expire_idle_series_by_hand_counts_what_it_hid(make: Any) -> None:
    """Without the thread or a clock: each call is one tick (the schedule is the caller's)."""
    engine = make(REVIEWS)
    peers = [engine.peer("inbound", {"WORKLOAD_NAME": f"w{i}"}) for i in range(3)]
    for peer in peers:
        engine.record_request(peer, response_code=200, duration_ms=1)
    assert engine.expire_idle_series() == 0  # recorded since the start: a whole interval not over
    engine.record_request(peers[0], response_code=200, duration_ms=1)
    # Two peers idle: their 4 HTTP series each go, istio_build stays.
    assert engine.expire_idle_series() == 2 * 4
    assert [s["source_workload"] for s in samples(engine, "istio_requests_total")] == ["w0"]
    assert engine.expire_idle_series() == 4  # now w0 was idle too
    assert samples(engine, "istio_requests_total") == []
    assert one(engine, "istio_build")["__value__"] == "1.0"


@pytest.mark.timing
def test_reporting_thread_ticks(make: Any) -> None:
    """The only engine test on the real clock: the daemon thread runs the schedule at all.
    It waits (up to a generous minute) for the thread's first report as an event, asserts
    nothing about how often it ran, and has no expiry to hide the series again."""
    engine = make(REVIEWS, {"tcp_reporting_duration": "10ms"})
    conn = engine.tcp_connection(engine.peer("inbound", PRODUCTPAGE))
    conn.add_bytes(sent=7)
    engine.start_reporting()
    try:
        assert engine.reporting.running
        assert engine.reporting.ran.wait(60), "the reporting thread never reported"
    finally:
        engine.stop_reporting()
    assert not engine.reporting.running
    assert one(engine, "istio_tcp_sent_bytes_total")["__value__"] == "7.0"
    assert samples(engine, "istio_tcp_connections_closed_total") == []
    conn.close()


def test_peer_scoped_labels_are_evaluated_once_per_peer(make: Any) -> None:
    """The resolver evaluates expressions that read only the peer/node once per peer."""
    from collections.abc import Iterator, Mapping

    class Counting(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self.data, self.reads = data, 0

        def __getitem__(self, key: str) -> Any:
            if key == "tag":
                self.reads += 1
            return self.data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    metadata = Counting({"tag": "blue", "filter_metadata": {}})
    engine = make(
        PRODUCTPAGE, {"metrics": [{"dimensions": {"tag": "xds.cluster_metadata['tag']"}}]}
    )
    peer = engine.peer("outbound", REVIEWS, cluster_metadata=metadata)
    for i in range(50):
        engine.record_request(peer, response_code=200 if i % 2 else 503, duration_ms=1)
    assert metadata.reads == 1
    assert {s["tag"] for s in samples(engine, "istio_requests_total")} == {"blue"}
    assert engine.cache_stats()["series_misses"] == 2


def test_out_of_mesh_peer_from_registry(backend: Any) -> None:
    from meshstats.registry import WorkloadRegistry

    registry = WorkloadRegistry.from_entries(
        [{"cidr": "203.0.113.0/24", "metadata": {"WORKLOAD_NAME": "partner-api",
                                                 "NAMESPACE": "external"}}]
    )  # fmt: skip
    engine = StatsEngine(REVIEWS, store=backend.store.Store(), registry=registry)
    known = engine.peer("inbound", None, peer_address="203.0.113.9:41000")
    stranger = engine.peer("inbound", None, peer_address="198.51.100.1:41000")
    engine.record_request(known, response_code=200, duration_ms=1)
    engine.record_request(stranger, response_code=200, duration_ms=1)
    got = {s["source_workload"]: s for s in samples(engine, "istio_requests_total")}
    assert set(got) == {"partner-api", "unknown"}
    assert got["partner-api"]["source_workload_namespace"] == "external"
    assert got["partner-api"]["source_principal"] == "unknown"  # a registry proves no identity


def test_tcp_without_exchange_on_the_client_side(make: Any) -> None:
    engine = make(PRODUCTPAGE)
    conn = engine.tcp_connection(reporter="outbound")
    conn.add_bytes(sent=5)
    conn.close()
    got = one(engine, "istio_tcp_connections_opened_total")
    assert got["reporter"] == "source"
    assert got["source_workload"] == "productpage-v1"
    assert got["destination_workload"] == "unknown"
