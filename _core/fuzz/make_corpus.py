"""Write the libFuzzer seed corpus: realistic Istio peer-exchange frames and variations.

The frames are built with protobuf itself (the pure-Python backend, whose deterministic
map order matches C++/Envoy; see reference/ecosystem.md §3), not with meshstats, so the
seeds are an independent sample of what real peers send. Usage (from _core/fuzz)::

    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 make_corpus.py corpus

Each seed is a file named after what it is; the set is small and committed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import sys
from pathlib import Path

# Before protobuf is imported: upb orders prefix keys (NAME/NAMESPACE) unlike Envoy.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

from google.protobuf import any_pb2, struct_pb2  # noqa: E402

TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
MAGIC = b"\x3d\x23\x04\x67"

# Node metadata as an Istio 1.x sidecar sends it (reference/telemetry-v2.md §3.1).
NODE: dict[str, object] = {
    "NAME": "productpage-v1-6b746f74dc-9stvs",
    "NAMESPACE": "default",
    "LABELS": {
        "app": "productpage",
        "version": "v1",
        "pod-template-hash": "6b746f74dc",
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": "productpage",
        "service.istio.io/canonical-revision": "v1",
    },
    "WORKLOAD_NAME": "productpage-v1",
    "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
    "SERVICE_ACCOUNT": "bookinfo-productpage",
    "CLUSTER_ID": "Kubernetes",
    "MESH_ID": "cluster.local",
    "INSTANCE_IPS": "10.44.1.7,fe80::5cde:76ff:fe0f:a4b4",
    "ISTIO_VERSION": "1.20.3",
    "PLATFORM_METADATA": {"gcp_project": "my-project", "gcp_location": "us-central1-c"},
    "APP_CONTAINERS": "productpage",
}
NODE_ID = "sidecar~10.44.1.7~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local"


def struct_bytes(value: dict[str, object]) -> bytes:
    s = struct_pb2.Struct()
    s.update(value)
    return s.SerializeToString(deterministic=True)


def frame(node: object, node_id: str | None = NODE_ID, type_url: str = TYPE_URL) -> bytes:
    outer: dict[str, object] = {"x-envoy-peer-metadata": node}
    if node_id:
        outer["x-envoy-peer-metadata-id"] = node_id
    any_msg = any_pb2.Any(type_url=type_url, value=struct_bytes(outer))
    body = any_msg.SerializeToString()
    return MAGIC + struct.pack(">I", len(body)) + body


def nested(depth: int) -> dict[str, object]:
    """A struct-in-list-in-struct chain `depth` containers deep."""
    value: object = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return {"deep": value}


def seeds() -> dict[str, bytes]:
    real = frame(NODE)
    out = {
        "frame_real": real,
        "frame_real_trailing": real + b"GET / HTTP/1.1\r\n\r\n",
        "frame_no_id": frame(NODE, None),
        "frame_empty_node": frame({}),
        "frame_minimal": frame({"NAME": "a", "NAMESPACE": "b"}, "x"),
        "frame_types": frame(
            {"n": 1.5, "neg": -0.0, "b": True, "f": False, "z": None, "s": "", "e": {}, "l": []}
        ),
        "frame_unicode": frame({"名前": "ポッド", "emoji": "\U0001f600", "edge": "\U0010ffff"}),
        "frame_list": frame({"IPS": ["10.0.0.1", 2.0, None, True, {"x": [1, [2, [3]]]}]}),
        "frame_deep_62": frame(nested(62)),
        "frame_wrong_type_url": frame(NODE, type_url="type.googleapis.com/google.protobuf.Value"),
        "frame_node_not_struct": frame("just a string"),
        "header_struct": struct_bytes(NODE),
        "header_base64": base64.b64encode(struct_bytes(NODE)),
        "header_base64_unpadded": base64.b64encode(struct_bytes({"NAME": "ab"})).rstrip(b"="),
        "bad_magic": b"\x3d\x23\x04\x68" + real[4:],
        "oversize_length": MAGIC + b"\xff\xff\xff\xff",
        "truncated_body": real[: len(real) // 2],
        "header_only": real[:8],
        "overlong_varint": MAGIC + b"\x00\x00\x00\x0c" + b"\x18" + b"\x80" * 10 + b"\x01",
        "bad_utf8_key": MAGIC + b"\x00\x00\x00\x08" + b"\x12\x06\x0a\x04\x0a\x02\xc0\x80",
    }
    # Unknown fields of every wire type, prepended inside the Any.
    body = real[8:]
    unknown = b"\x18\x96\x01" + b"\x21" + b"\x00" * 8 + b"\x2a\x03abc" + b"\x35" + b"\x00" * 4
    out["frame_unknown_fields"] = (
        MAGIC + struct.pack(">I", len(unknown) + len(body)) + unknown + body
    )
    return out


def main(directory: str) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (path / name).write_bytes(data)
        print(f"{name:28} {len(data):5} bytes  sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "corpus")
