"""What only the compiled codec has: ``_walk_only``, its stack/heap token storage, the
GIL-free path for big inputs, and its shared encoder under re-entrant use."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from meshstats.errors import PeerExchangeError

pytestmark = pytest.mark.c_extension


@pytest.fixture(scope="module")
def pe() -> object:
    from meshstats import _peer_exchange_c

    return _peer_exchange_c


def test_walk_only_counts_tokens(pe: object) -> None:
    frame = pe.encode_peer_prefix({"a": [1.0, "x"]}, "id")  # type: ignore[attr-defined]
    # STRUCT, KEY(meta) STRUCT KEY(a) LIST NUMBER STRING END END, KEY(id) STRING, END = 12.
    assert pe._walk_only(frame) == 12  # type: ignore[attr-defined]


def test_walk_only_raises_like_decode(pe: object) -> None:
    bad = bytes.fromhex("3d230467ffffffff")
    with pytest.raises(PeerExchangeError) as info:
        pe._walk_only(bad)  # type: ignore[attr-defined]
    assert (info.value.reason, info.value.offset) == ("oversize", 4)


@pytest.mark.parametrize("n", [10, 300, 5000])
def test_token_storage_beyond_the_stack_buffer(pe: object, n: int) -> None:
    # 256 tokens fit on the stack; 5000 list items also cross the 16 KiB GIL-release size.
    from meshstats import _peer_exchange_py as py

    meta = {"items": [f"v{i}" for i in range(n)], "n": {str(i): i for i in range(n // 10)}}
    frame = pe.encode_peer_prefix(meta, "id")  # type: ignore[attr-defined]
    assert frame == py.encode_peer_prefix(meta, "id")
    got = pe.decode_peer_prefix(frame, max_size=len(frame))  # type: ignore[attr-defined]
    assert got.metadata == py.decode_peer_prefix(frame, max_size=len(frame)).metadata
    assert got.metadata["items"][-1] == f"v{n - 1}"


class Reentrant(Mapping[str, object]):
    """A Mapping whose items() encodes another frame while the outer encode is running."""

    def __init__(self, pe: object) -> None:
        self._pe = pe
        self.inner = b""

    def __getitem__(self, key: str) -> object:
        return {"k": "v"}[key]

    def __iter__(self) -> Iterator[str]:
        return iter(["k"])

    def __len__(self) -> int:
        return 1

    def items(self):  # type: ignore[no-untyped-def]
        self.inner = self._pe.encode_peer_prefix({"inner": True})  # type: ignore[attr-defined]
        return super().items()


def test_reentrant_encoding_uses_its_own_encoder(pe: object) -> None:
    from meshstats import _peer_exchange_py as py

    m = Reentrant(pe)
    outer = pe.encode_peer_prefix({"m": m, "z": 1})  # type: ignore[attr-defined]
    assert outer == py.encode_peer_prefix({"m": {"k": "v"}, "z": 1})
    assert m.inner == py.encode_peer_prefix({"inner": True})
