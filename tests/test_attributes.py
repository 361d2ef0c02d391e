"""Istio's resolution rules, one at a time (the goldens check them together)."""

from __future__ import annotations

import doctest

import pytest

import meshstats.attributes
from meshstats.attributes import (
    Layered,
    is_grpc_content_type,
    peer_attributes,
    request_attributes,
    resolve_destination_service,
    response_flags_string,
    service_attributes,
)
from meshstats.peer_metadata import PeerMetadata

LOCAL = PeerMetadata.from_struct(
    {
        "WORKLOAD_NAME": "reviews-v2",
        "NAMESPACE": "default",
        "LABELS": {"service.istio.io/canonical-name": "reviews"},
    }
)
PEER = PeerMetadata.from_struct({"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "claimed"})


def test_doctests() -> None:
    assert doctest.testmod(meshstats.attributes).failed == 0


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (None, "-"),
        (0, "-"),
        ("", "-"),
        (0x1, "LH"),
        (0x20 | 0x2 | 0x8000, "UH,UF,URX"),
        (1 << 18, "DPE"),
        ((1 << 19) | 1, "LH,524288"),  # bits past Envoy's table print as a number
        (["DC", "UF", "UF"], "UF,DC"),
        ("UO, NR", "UO,NR"),
        (["XX", "UH"], "UH,XX"),
    ],
)
def test_response_flags(flags: object, text: str) -> None:
    assert response_flags_string(flags) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("Application/GRPC+json; charset=utf-8", True),
        ("application/grpc-web", False),
        ("application/json", False),
        (None, False),
    ],
)
def test_grpc_content_type(content_type: str | None, grpc: bool) -> None:
    assert is_grpc_content_type(content_type) is grpc


def test_destination_service_order() -> None:
    md = {"istio": {"services": [{"host": "a.ns1.svc", "namespace": "ns1"}, {"host": "b"}]}}
    # the bare `istio` map is accepted as well as filter_metadata.istio; element 0 wins
    got = resolve_destination_service(host_header="h:80", cluster_metadata=md)
    assert (got.host, got.name, got.namespace) == ("a.ns1.svc", "a", "ns1")
    named = {"istio": {"services": [{"host": "a.ns1.svc", "name": "alpha"}]}}
    assert resolve_destination_service(cluster_metadata=named).name == "alpha"
    off = resolve_destination_service(host_header="h:80", host_header_fallback=False)
    assert (off.host, off.name) == (None, None)
    special = resolve_destination_service(
        host_header="h:80", cluster_name="PassthroughCluster", cluster_metadata=md
    )
    assert (special.host, special.name) == ("h:80", "PassthroughCluster")
    empty = resolve_destination_service(cluster_metadata={"istio": {"services": []}})
    assert (empty.host, empty.name, empty.namespace) == (None, None, None)


def test_service_fallbacks_per_side() -> None:
    none = resolve_destination_service()
    inbound = peer_attributes("inbound", LOCAL, PEER)
    assert service_attributes("inbound", none, inbound) == {
        "destination.service.host": "reviews",
        "destination.service.name": "reviews",
        "destination.service.namespace": "default",
    }
    outbound = peer_attributes("outbound", LOCAL, PEER)
    assert service_attributes("outbound", none, outbound) == {
        "destination.service.namespace": "claimed"
    }


def test_principal_namespace_beats_metadata() -> None:
    attrs = peer_attributes(
        "inbound", LOCAL, PEER, peer_principal="spiffe://td/ns/real/sa/pp", local_principal="x"
    )
    assert attrs["source.workload.namespace"] == "real"
    assert attrs["connection.mtls"] is True
    assert attrs["downstream_peer"]["workload"] == "productpage-v1"
    plain = peer_attributes("inbound", LOCAL, PEER)
    assert plain["source.workload.namespace"] == "claimed"
    assert plain["connection.mtls"] is False
    assert "source.principal" not in plain  # no certificate, no principal


def test_local_values_verbatim_and_peer_values_absent() -> None:
    attrs = peer_attributes("outbound", LOCAL, None)
    assert attrs["source.app"] == ""  # the local node has no app label: printed empty
    assert "destination.app" not in attrs  # nothing known of the peer: "unknown" later
    assert attrs["context.reporter.kind"] == "outbound"
    assert attrs["xds.node.metadata"]["WORKLOAD_NAME"] == "reviews-v2"
    with pytest.raises(ValueError, match="reporter"):
        peer_attributes("sideways", LOCAL, None)  # type: ignore[arg-type]


def test_request_attributes_and_layering() -> None:
    attrs = request_attributes(
        protocol="grpc", response_code=200, grpc_status=0, response_flags=0x20,
        host="h", path="/a?b=1", headers={"X-Id": "7"}, extra={"custom.thing": 1},
    )  # fmt: skip
    assert attrs["request.url_path"] == "/a"
    assert attrs["request.headers"] == {"x-id": "7"}
    assert attrs["context.proxy_error_code"] == "UF"
    layered = Layered(attrs, {"response.code": 500, "source.workload.name": "w"})
    assert layered["response.code"] == 200  # the request layer wins
    assert layered["source.workload.name"] == "w"
    assert "custom.thing" in layered and "nope" not in layered
    assert "source.workload.name" in layered and layered.get("source.workload.name") == "w"
    assert layered.get("nope", 7) == 7
    with pytest.raises(KeyError):
        layered["nope"]
