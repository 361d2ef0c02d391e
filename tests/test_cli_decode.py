"""``python -m meshstats decode`` in a subprocess, once per backend.

The ``py`` case runs the command with ``MESHSTATS_NO_EXTENSIONS=1``, so both codecs are
exercised through the real entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _istio_samples import NODE_ID, REVIEWS_V2
from conftest import Backend

import meshstats

SRC = str(Path(meshstats.__file__).resolve().parent.parent)


@pytest.fixture
def run(backend: Backend) -> Any:
    env = {**os.environ, "PYTHONPATH": SRC}
    if backend.name == "py":
        env["MESHSTATS_NO_EXTENSIONS"] = "1"
    else:
        env.pop("MESHSTATS_NO_EXTENSIONS", None)

    def _run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "meshstats", "decode", *args],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=60,
        )

    return _run


@pytest.fixture
def frame(backend: Backend) -> bytes:
    frame: bytes = backend.peer_exchange.encode_peer_prefix(REVIEWS_V2, NODE_ID)
    return frame


@pytest.fixture
def header(backend: Backend) -> str:
    header: str = backend.peer_exchange.encode_peer_header(REVIEWS_V2)
    return header


def ok_json(result: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr.decode()
    out: dict[str, object] = json.loads(result.stdout)
    return out


def test_hex_prefix_argument(run: Any, frame: bytes) -> None:
    out = ok_json(run(frame.hex()))
    assert out["kind"] == "prefix"
    assert out["metadata"] == REVIEWS_V2 and out["metadata_id"] == NODE_ID
    assert out["consumed"] == len(frame) and out["trailing"] == 0


def test_hex_with_blanks_and_payload(run: Any, frame: bytes) -> None:
    spaced = " ".join(f"{b:02x}" for b in frame + b"GET /")
    out = ok_json(run("--format", "hex", spaced))
    assert out["metadata"] == REVIEWS_V2 and out["trailing"] == 5


def test_base64_header_argument(run: Any, header: str) -> None:
    out = ok_json(run(header))
    assert out == {
        "kind": "header",
        "consumed": len(header),
        "metadata_id": None,
        "metadata": REVIEWS_V2,
    }
    unpadded = ok_json(run("--format", "base64", header.rstrip("=")))
    assert unpadded["metadata"] == REVIEWS_V2
    named = ok_json(run(f"x-envoy-peer-metadata: {header}"))
    assert named["metadata"] == REVIEWS_V2


def test_raw_file_and_hex_file(run: Any, frame: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "frame.bin"
    raw.write_bytes(frame + b"\x16\x03\x01")
    out = ok_json(run("--file", str(raw)))
    assert out["kind"] == "prefix" and out["metadata"] == REVIEWS_V2 and out["trailing"] == 3
    text = tmp_path / "frame.hex"
    text.write_text(frame.hex() + "\n")
    assert ok_json(run("-f", str(text)))["metadata_id"] == NODE_ID


def test_stdin(run: Any, header: str, frame: bytes) -> None:
    assert ok_json(run("-", stdin=header.encode() + b"\n"))["metadata"] == REVIEWS_V2
    assert ok_json(run(stdin=frame))["metadata_id"] == NODE_ID  # raw bytes, no argument


def test_peer_accessors(run: Any, header: str) -> None:
    peer = ok_json(run("--peer", header))["peer"]
    assert isinstance(peer, dict)
    assert peer["workload_type"] == "deployment"
    assert peer["app"] == "reviews" and peer["canonical_revision"] == "v2"
    assert peer["instance_ips"] == ["10.44.0.7", "fd00:10:44::7"]
    assert peer["filter_state"]["workload"] == "reviews-v2"


def test_bad_base64_reports_character_offset(run: Any, header: str) -> None:
    broken = header[:100] + "*" + header[101:]
    result = run(broken)
    assert result.returncode == 1 and result.stdout == b""
    assert b"bad_base64 at character 100" in result.stderr
    named = run("x-envoy-peer-metadata: " + broken)
    assert b"bad_base64 at character 123" in named.stderr  # counted in the input as given


def test_not_a_prefix(run: Any) -> None:
    result = run(b"GET / HTTP/1.1".hex())
    assert result.returncode == 1
    assert b"bad_magic at byte 0" in result.stderr


def test_truncated_prefix(run: Any, frame: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.bin"
    path.write_bytes(frame[:100])
    result = run("--file", str(path))
    assert result.returncode == 1
    assert b"truncated at byte 100" in result.stderr


def test_oversize_prefix(run: Any, frame: bytes) -> None:
    result = run("--max-size", "100", frame.hex())
    assert result.returncode == 1 and b"oversize at byte 4" in result.stderr


def test_bad_hex(run: Any) -> None:
    result = run("--format", "hex", "3d23046")
    assert result.returncode == 1 and b"odd number of hex digits" in result.stderr


def test_missing_file_and_empty_input(run: Any, tmp_path: Path) -> None:
    assert run("--file", str(tmp_path / "nope")).returncode == 1
    empty = run("-", stdin=b"  \n")
    assert empty.returncode == 1 and b"empty input" in empty.stderr


def test_usage_errors(run: Any, header: str, tmp_path: Path) -> None:
    both = run(header, "--file", str(tmp_path / "x"))
    assert both.returncode == 2 and b"not both" in both.stderr
    assert run("--format", "yaml", header).returncode == 2
    assert run("--max-size", "-1", header).returncode == 2


def test_the_readme_placeholder_is_read_as_hex(run: Any) -> None:
    # The README's `meshstats decode 3d230467000002...`: a hex prefix with "..." in it.
    result = run("3d230467000002...")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().strip() == (
        "meshstats decode: not hex: character '.' (hex digit 14); read as a hex prefix "
        "(--format auto: it starts with the magic 3d230467)"
    )


def test_a_hex_prefix_with_blanks_and_a_typo_names_the_typo(run: Any, frame: bytes) -> None:
    text = frame.hex(" ", 4).upper()
    broken = text[:20] + "G" + text[21:]
    result = run(broken)
    assert result.returncode == 1
    assert b"not hex: character 'G'" in result.stderr


def test_auto_detection_says_which_encodings_were_tried(run: Any) -> None:
    result = run("hello world!")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "meshstats decode: bad_base64 at character 5: not standard base64; read as a base64 "
        "header value (--format auto: not a raw prefix (no magic 3d 23 04 67), not hex "
        "(character 'h' at 0))"
    )
    # An explicit --format is not second-guessed, so nothing is added.
    explicit = run("--format", "base64", "hello world!")
    assert explicit.stderr.decode().strip() == (
        "meshstats decode: bad_base64 at character 5: not standard base64"
    )
