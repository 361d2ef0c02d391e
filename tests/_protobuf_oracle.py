"""Google's protobuf as an independent oracle for the codec tests, in a child process.

The codec must match C++ protobuf's *deterministic* serialization. In this Python
only the pure-Python protobuf backend orders map keys the way C++ does (upb writes
``NAMESPACE`` before ``NAME``: reference/ecosystem.md §3), and the backend is fixed
the first time protobuf is imported. Running the oracle in its own process makes the
choice independent of whatever else the test session imported first. The child checks
the backend and exits with an error if it is not "python".

Protocol on stdin/stdout: 4-byte big-endian length, then a pickled request tuple
``(op, *args)``; the reply is framed the same way. Pickle keeps NaN payloads, -0.0
and the bool/float distinction exactly, which JSON would not.

Run by ``tests/test_peer_exchange_oracle.py``; not a test module itself.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any

os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

from google.protobuf import any_pb2, struct_pb2  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
MAGIC = 0x3D230467


def value_to_py(value: Any) -> object:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "struct_value":
        return struct_to_py(value.struct_value)
    if kind == "list_value":
        return [value_to_py(item) for item in value.list_value.values]
    return getattr(value, kind)


def struct_to_py(message: Any) -> dict[str, object]:
    return {key: value_to_py(value) for key, value in message.fields.items()}


def build_struct(tree: dict[str, object]) -> Any:
    message = struct_pb2.Struct()
    message.update(tree)
    return message


def handle(op: str, *args: Any) -> object:
    if op == "backend":
        return api_implementation.Type()
    if op == "encode_struct":
        (tree,) = args
        return build_struct(tree).SerializeToString(deterministic=True)
    if op == "encode_struct_insertion_order":
        # The default serializer: the pure-Python backend writes map entries in
        # insertion order, so a shuffled dict gives an unsorted (still valid) encoding.
        (tree,) = args
        return build_struct(tree).SerializeToString()
    if op == "encode_frame":
        tree, node_id = args
        outer = struct_pb2.Struct()
        outer.fields["x-envoy-peer-metadata"].struct_value.CopyFrom(build_struct(tree))
        if node_id:
            outer.fields["x-envoy-peer-metadata-id"].string_value = node_id
        msg = any_pb2.Any(type_url=TYPE_URL, value=outer.SerializeToString(deterministic=True))
        body = msg.SerializeToString()
        return struct.pack(">II", MAGIC, len(body)) + body
    if op == "parse_struct":
        (data,) = args
        message = struct_pb2.Struct()
        try:
            message.ParseFromString(data)
        except Exception as exc:  # DecodeError, or UnicodeDecodeError for bad UTF-8
            return ("error", f"{type(exc).__name__}: {exc}")
        return ("ok", struct_to_py(message))
    if op == "parse_any":
        (data,) = args
        any_msg = any_pb2.Any()
        try:
            any_msg.ParseFromString(data)
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}")
        return ("ok", any_msg.type_url, any_msg.value)
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    if api_implementation.Type() != "python":
        print(
            f"protobuf backend is {api_implementation.Type()!r}, the oracle needs 'python'",
            file=sys.stderr,
        )
        return 3
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return 0
        request = pickle.loads(stdin.read(struct.unpack(">I", head)[0]))
        try:
            reply: object = ("ok", handle(*request))
        except Exception as exc:
            reply = ("raised", f"{type(exc).__name__}: {exc}")
        blob = pickle.dumps(reply)
        stdout.write(struct.pack(">I", len(blob)) + blob)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
