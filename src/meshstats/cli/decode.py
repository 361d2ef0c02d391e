"""``meshstats decode``: show what a peer-exchange prefix or header value carries, as JSON.

Examples::

    meshstats decode Cg8KBE5BTUUSBxoFcG9kLTE=              # a header value (base64)
    meshstats decode 3d2304670000028c0a2a74797065...       # a TCP prefix as hex
    meshstats decode --file frame.bin --peer               # raw bytes; also Istio accessors
    tcpdump ... | xxd -p | meshstats decode -              # stdin

``--format auto`` (the default) decides from the input: bytes starting with the magic
``3d 23 04 67`` are a raw prefix; text made only of hex digits (blanks allowed), or text
starting with the magic written in hex (``3d230467``), is hex, decoded and then read as a
prefix; other text is a header value (an optional leading ``x-envoy-peer-metadata:`` is
dropped). When auto-detected input does not decode, the message says what it was read as
and why the other encodings were ruled out. Exit status: 0 decoded, 1 bad input (reason
and offset on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

HEADER_NAME = b"x-envoy-peer-metadata:"
_WS = b" \t\n\r\v\f"
_HEX_BLANKS = re.compile(rb"[\s:]")
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]")
_TEXT = re.compile(rb"[\x20-\x7e\t\n\r\v\f]*")
MAGIC_BYTES = bytes.fromhex("3d230467")
MAGIC_HEX = b"3d230467"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "value",
        nargs="?",
        help="a header value (base64) or a prefix (hex); '-' or nothing reads stdin",
    )
    parser.add_argument("--file", "-f", metavar="PATH", help="read the input from PATH")
    parser.add_argument(
        "--format",
        choices=("auto", "hex", "base64", "raw"),
        default="auto",
        help="how the input is written (auto: magic -> raw prefix, hex digits -> hex "
        "prefix, base64 -> header value)",
    )
    parser.add_argument(
        "--peer", action="store_true", help="also print Istio's accessors (PeerMetadata)"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=65536,
        metavar="BYTES",
        help="largest frame/Struct accepted (65536, the codec's default)",
    )


class _BadInput(Exception):
    """Input that is not decodable; exit status 1."""


def _read_input(args: argparse.Namespace) -> bytes:
    if args.file is not None and args.value is not None:
        raise _Usage("give the input either as an argument or with --file, not both")
    if args.file is not None:
        try:
            with open(args.file, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise _BadInput(f"cannot read {args.file}: {exc.strerror}") from None
    if args.value is not None and args.value != "-":
        # Arguments are text; surrogateescape gives back the exact bytes for --format raw.
        return os.fsencode(args.value)
    if args.value is None and sys.stdin.isatty():
        raise _Usage("no input: give a value, --file PATH, or pipe it into stdin ('-')")
    return sys.stdin.buffer.read()


class _Usage(Exception):
    """Bad combination of options; exit status 2."""


def _detect(data: bytes, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if data.startswith(MAGIC_BYTES):
        return "raw"
    text = data.strip(_WS)
    compact = _HEX_BLANKS.sub(b"", text)
    if compact and _NOT_HEX.search(compact) is None:
        return "hex"
    if compact[: len(MAGIC_HEX)].lower() == MAGIC_HEX:
        # A prefix written in hex, with a typo or a "..." in it: saying which character is
        # not a hex digit helps more than reading it as base64 would.
        return "hex"
    if _TEXT.fullmatch(text):
        # Printable text that is not hex: a header value (the codec names a bad character).
        return "base64"
    return "raw"


def _auto_note(data: bytes, kind: str) -> str:
    """What --format auto read the input as, and why not as the other encodings."""
    compact = _HEX_BLANKS.sub(b"", data.strip(_WS))
    if kind == "hex":
        return "read as a hex prefix (--format auto: it starts with the magic 3d230467)"
    not_raw = "not a raw prefix (no magic 3d 23 04 67)"
    bad = _NOT_HEX.search(compact)
    not_hex = (
        f"not hex (character {bad.group().decode('latin-1')!r} at {bad.start()})"
        if bad is not None
        else "not hex"
    )
    if kind == "base64":
        return f"read as a base64 header value (--format auto: {not_raw}, {not_hex})"
    return f"read as raw bytes (--format auto: {not_hex}, not printable text for base64)"


def _strip_header_name(text: bytes) -> tuple[int, bytes]:
    """Drop a leading ``x-envoy-peer-metadata:``; return (characters dropped, rest)."""
    if text[: len(HEADER_NAME)].lower() == HEADER_NAME:
        return len(HEADER_NAME), text[len(HEADER_NAME) :]
    return 0, text


def _from_hex(data: bytes) -> bytes:
    compact = _HEX_BLANKS.sub(b"", data)
    bad = _NOT_HEX.search(compact)
    if bad is not None:
        char = bad.group().decode("latin-1")
        raise _BadInput(f"not hex: character {char!r} (hex digit {bad.start()})")
    if len(compact) % 2:
        raise _BadInput(f"not hex: odd number of hex digits ({len(compact)})")
    return bytes.fromhex(compact.decode("ascii"))


def _peer_view(metadata: dict[str, object], node_id: str | None) -> dict[str, object]:
    from ..peer_metadata import PeerMetadata

    peer = PeerMetadata.from_struct(metadata, node_id)
    return {
        "name": peer.name,
        "namespace": peer.namespace,
        "workload_name": peer.workload_name,
        "workload_type": peer.workload_type,
        "owner": peer.owner,
        "app": peer.app,
        "version": peer.version,
        "canonical_service": peer.canonical_service,
        "canonical_revision": peer.canonical_revision,
        "cluster_id": peer.cluster_id,
        "mesh_id": peer.mesh_id,
        "identity": peer.identity,
        "service_account": peer.service_account,
        "istio_version": peer.istio_version,
        "instance_ips": peer.instance_ips,
        "region": peer.region,
        "availability_zone": peer.availability_zone,
        "labels": dict(peer.labels),
        "platform_metadata": dict(peer.platform_metadata),
        "filter_state": peer.to_filter_state(),
    }


def _decode(data: bytes, fmt: str, max_size: int) -> dict[str, Any]:
    from .. import _peer_exchange as codec
    from ..errors import PeerExchangeError

    if not data.strip(_WS):
        raise _BadInput("empty input")
    kind = _detect(data, fmt)
    where = ""
    try:
        if kind == "base64":
            lead = len(data) - len(data.lstrip(_WS))
            dropped, _ = _strip_header_name(data[lead:])
            # Blank out the header name instead of cutting it, so the codec's base64
            # offsets still count characters of the input as given.
            value = data[:lead] + b" " * dropped + data[lead + dropped :]
            where = " of the base64-decoded Struct"
            metadata = codec.decode_peer_header(value, max_size=max_size)
            return {
                "kind": "header",
                "consumed": len(value.strip(_WS)),
                "metadata_id": None,
                "metadata": metadata,
            }
        raw = _from_hex(data) if kind == "hex" else data
        if kind == "hex":
            where = " of the hex-decoded input"
        exchange = codec.decode_peer_prefix(raw, max_size=max_size)
    except PeerExchangeError as exc:
        base64_level = exc.reason == "bad_base64" or (kind == "base64" and exc.reason == "oversize")
        place = f"character {exc.offset}" if base64_level else f"byte {exc.offset}{where}"
        detail = f": {exc.detail}" if exc.detail else ""
        note = f"; {_auto_note(data, kind)}" if fmt == "auto" else ""
        raise _BadInput(f"{exc.reason} at {place}{detail}{note}") from None
    except _BadInput as exc:  # not hex after all
        note = f"; {_auto_note(data, kind)}" if fmt == "auto" else ""
        raise _BadInput(f"{exc}{note}") from None
    return {
        "kind": "prefix",
        "consumed": exchange.consumed,
        "trailing": len(raw) - exchange.consumed,
        "metadata_id": exchange.metadata_id,
        "metadata": exchange.metadata,
    }


def run(args: argparse.Namespace) -> int:
    try:
        data = _read_input(args)
        if not 0 <= args.max_size <= 0x7FFFFFFF:
            raise _Usage(f"--max-size must be in 0..2147483647, got {args.max_size}")
        result = _decode(data, args.format, args.max_size)
    except _Usage as exc:
        print(f"meshstats decode: {exc}", file=sys.stderr)
        return 2
    except (_BadInput, ValueError) as exc:
        print(f"meshstats decode: {exc}", file=sys.stderr)
        return 1
    if args.peer:
        result["peer"] = _peer_view(result["metadata"], result["metadata_id"])
    # NaN and infinities are valid Struct numbers; they print as Python's json does.
    text = json.dumps(result, indent=2, ensure_ascii=False)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `meshstats decode ... | head`: the reader left; that is not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
