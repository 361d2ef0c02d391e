"""HTTP/1.1 heads split into fields and checked, compiled; the same API as ``_h1_head_py``.

>>> parse_head(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n", True)[:3]
(b'GET', b'/', b'1.1')
"""

__all__ = ["NOTED", "note_fields", "parse_fields", "parse_head", "write_fields"]

HeaderList = list[tuple[bytes, bytes]]
Noted = dict[bytes, list[int]]

NOTED: frozenset[bytes]

def parse_fields(block: bytes) -> tuple[HeaderList, HeaderList, Noted]: ...
def parse_head(
    head: bytes, request: bool
) -> tuple[bytes, bytes | int, bytes, HeaderList, HeaderList, Noted]: ...
def note_fields(raw: HeaderList) -> tuple[HeaderList, Noted]: ...
def write_fields(raw: HeaderList) -> bytes: ...
