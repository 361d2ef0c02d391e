"""Peer-exchange codec: decode and encode a realistic ~650-byte Istio frame.

Each group holds the compiled codec beside its baselines, measured in the same run:
the pure-Python twin and Google's protobuf (its default upb backend, what a Python
program would otherwise use). Target (issue 3): decoding at least 2x faster than
upb's ``Any.ParseFromString`` + ``Unpack`` + ``MessageToDict``. Run with::

    python3 -m pytest benchmarks/bench_peer_exchange.py --benchmark-only

The ``walk`` group times the C walker alone (validation + tokens, no Python objects),
the floor the dict building sits on.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from meshstats import _peer_exchange_c as c_codec
from meshstats import _peer_exchange_py as py_codec

# The node Struct of reference/ecosystem.md §3 (449 B Struct, 649 B frame with upb).
NODE: dict[str, object] = {
    "NAME": "productpage-v1-6b746f74dc-9stvs",
    "NAMESPACE": "default",
    "LABELS": {"app": "productpage", "version": "v1"},
    "WORKLOAD_NAME": "productpage-v1",
    "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
    "SERVICE_ACCOUNT": "bookinfo-productpage",
    "CLUSTER_ID": "Kubernetes",
    "MESH_ID": "cluster.local",
    "INSTANCE_IPS": "10.44.1.7,fe80::5cde:76ff:fe0f:a4b4",
    "PLATFORM_METADATA": {"gcp_project": "bookinfo-demo", "gcp_location": "us-central1-c"},
}
NODE_ID = "sidecar~10.44.1.7~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local"
FRAME = c_codec.encode_peer_prefix(NODE, NODE_ID)
TYPE_URL = "type.googleapis.com/google.protobuf.Struct"


def _protobuf() -> tuple[Any, Any, Any]:
    from google.protobuf import any_pb2, json_format, struct_pb2

    return any_pb2, struct_pb2, json_format


def _decode_protobuf(frame: bytes) -> tuple[dict[str, Any], str | None]:
    """What a Python proxy would do with protobuf: parse the Any, unpack, convert."""
    any_pb2, struct_pb2, json_format = _protobuf()
    n = int.from_bytes(frame[4:8], "big")
    msg = any_pb2.Any()
    msg.ParseFromString(frame[8 : 8 + n])
    outer = struct_pb2.Struct()
    if not msg.Unpack(outer):
        raise ValueError("not a Struct")
    d = json_format.MessageToDict(outer)
    return d.get("x-envoy-peer-metadata", {}), d.get("x-envoy-peer-metadata-id")


def _parse_protobuf_only(frame: bytes) -> object:
    """upb parse + unpack without building a dict: the fairest floor for protobuf."""
    any_pb2, struct_pb2, _ = _protobuf()
    msg = any_pb2.Any()
    msg.ParseFromString(frame[8 : 8 + int.from_bytes(frame[4:8], "big")])
    outer = struct_pb2.Struct()
    msg.Unpack(outer)
    return outer


def _encode_protobuf(node: dict[str, object], node_id: str) -> bytes:
    any_pb2, struct_pb2, _ = _protobuf()
    outer = struct_pb2.Struct()
    outer.update({"x-envoy-peer-metadata": node, "x-envoy-peer-metadata-id": node_id})
    body = any_pb2.Any(
        type_url=TYPE_URL, value=outer.SerializeToString(deterministic=True)
    ).SerializeToString()
    return b"\x3d\x23\x04\x67" + len(body).to_bytes(4, "big") + bytes(body)


def test_frame_is_realistic() -> None:
    assert 600 <= len(FRAME) <= 700
    assert py_codec.decode_peer_prefix(FRAME).metadata == NODE
    meta, node_id = _decode_protobuf(FRAME)
    assert meta == NODE and node_id == NODE_ID
    # upb writes NAMESPACE before NAME (ecosystem.md §3), so compare decoded, not bytes.
    assert c_codec.decode_peer_prefix(_encode_protobuf(NODE, NODE_ID)).metadata == NODE


DECODERS: dict[str, Callable[[bytes], object]] = {
    "meshstats_c": c_codec.decode_peer_prefix,
    "meshstats_py": py_codec.decode_peer_prefix,
    "protobuf_upb": _decode_protobuf,
    "protobuf_upb_parse_only_no_dict": _parse_protobuf_only,
}


@pytest.mark.benchmark(group="peer_exchange decode ~650 B frame -> dict")
@pytest.mark.parametrize("impl", list(DECODERS))
def test_decode(benchmark: Any, impl: str) -> None:
    decode = DECODERS[impl]
    benchmark(decode, FRAME)


def _encoders() -> dict[str, Callable[[], bytes]]:
    mods: dict[str, ModuleType] = {"meshstats_c": c_codec, "meshstats_py": py_codec}

    def encoder(mod: ModuleType) -> Callable[[], bytes]:
        return lambda: bytes(mod.encode_peer_prefix(NODE, NODE_ID))

    out = {name: encoder(mod) for name, mod in mods.items()}
    out["protobuf_upb"] = lambda: _encode_protobuf(NODE, NODE_ID)
    return out


ENCODERS = _encoders()


@pytest.mark.benchmark(group="peer_exchange encode dict -> ~650 B frame")
@pytest.mark.parametrize("impl", list(ENCODERS))
def test_encode(benchmark: Any, impl: str) -> None:
    benchmark(ENCODERS[impl])


@pytest.mark.benchmark(group="peer_exchange decode ~650 B frame -> dict")
def test_walk_only_c(benchmark: Any) -> None:
    """The C walk alone (no Python objects), in the decode group as its floor."""
    assert c_codec._walk_only(FRAME) > 0
    benchmark(c_codec._walk_only, FRAME)


@pytest.mark.benchmark(group="peer_exchange header decode (base64 Struct) -> dict")
@pytest.mark.parametrize("impl", ["meshstats_c", "meshstats_py"])
def test_decode_header(benchmark: Any, impl: str) -> None:
    mod = c_codec if impl == "meshstats_c" else py_codec
    value = c_codec.encode_peer_header(NODE)
    benchmark(mod.decode_peer_header, value)
