"""The one exception hierarchy, shared by the compiled and the pure-Python backends.

Every class also subclasses the builtin a caller would naturally catch, so
``except ValueError`` keeps working for code that does not know meshstats.

>>> from meshstats.errors import MeshstatsError, InvalidSampleError
>>> try:
...     raise InvalidSampleError("amount must be >= 0, got -1")
... except ValueError as exc:
...     isinstance(exc, MeshstatsError)
True
"""

from __future__ import annotations

__all__ = [
    "MeshstatsError",
    "InvalidSampleError",
    "UnknownSeriesError",
    "InvalidMetricError",
    "DuplicateMetricError",
    "InvalidLabelsError",
    "ArrayTypeError",
    "BatchShapeError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "PeerExchangeError",
    "PeerMetadataTypeError",
    "ConfigError",
    "ExpressionError",
    "MissingExtraError",
    "StoreFileError",
    "DecoderFinishedError",
]


class MeshstatsError(Exception):
    """Base class of every error meshstats raises on purpose."""


class InvalidSampleError(MeshstatsError, ValueError):
    """A recorded value makes no sense for its metric (negative counter step, NaN, ...)."""


class UnknownSeriesError(MeshstatsError, IndexError, ValueError):
    """A series or metric id that the store never handed out."""

    def __init__(self, message: str, series_id: int | None = None) -> None:
        super().__init__(message)
        self.series_id = series_id


class InvalidMetricError(MeshstatsError, ValueError):
    """A metric definition is malformed (bad name, bad buckets, bad label names)."""


class DuplicateMetricError(InvalidMetricError):
    """A metric family with the same exposed name is already registered."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class InvalidLabelsError(MeshstatsError, ValueError):
    """Label values do not match the metric's label names (count or type)."""


class ArrayTypeError(MeshstatsError, TypeError):
    """A batch argument is not a 1-D buffer of an accepted dtype."""


class BatchShapeError(MeshstatsError, ValueError):
    """Batch arguments disagree in length."""


class InvalidArgumentError(MeshstatsError, ValueError):
    """An argument has the right type but a value outside its range (``max_size=-1``)."""


class InvalidArgumentTypeError(MeshstatsError, TypeError):
    """An argument has a type the function does not take (``str`` where bytes belong)."""


#: ``PeerExchangeError.detail`` per reason, the same from both backends: what the rule
#: in docs/peer_exchange.md that the input broke says.
PEER_EXCHANGE_DETAILS: dict[str, str] = {
    "bad_magic": "not a peer-exchange prefix (magic 0x3D230467 expected)",
    "truncated": "input ends inside the element starting here",
    "oversize": "frame larger than max_size",
    "bad_varint": "varint longer than 10 bytes or above 2**64-1",
    "bad_wire_type": "unsupported protobuf wire type (groups are not supported)",
    "too_deep": "Struct/ListValue nesting deeper than 64",
    "bad_utf8": "string is not valid UTF-8",
    "wrong_type_url": "Any.type_url is not type.googleapis.com/google.protobuf.Struct",
    "bad_base64": "not standard base64",
    "bad_field": "invalid field number, or a known field with the wrong wire type",
}


class PeerExchangeError(MeshstatsError, ValueError):
    """Peer metadata could not be decoded.

    ``offset`` is the byte position (from the start of the input given to the decoder)
    where the problem was found; ``reason`` is a short machine-readable code such as
    ``"bad_magic"``, ``"truncated"`` or ``"oversize"``; ``detail`` defaults to the rule's
    wording (``PEER_EXCHANGE_DETAILS``), so both backends give the same message.

    >>> str(PeerExchangeError("oversize", 4))
    'oversize at byte 4: frame larger than max_size'
    """

    def __init__(self, reason: str, offset: int, detail: str | None = None) -> None:
        self.reason = reason
        self.offset = offset
        if detail is None:
            detail = PEER_EXCHANGE_DETAILS.get(reason, "")
        self.detail = detail
        text = f"{reason} at byte {offset}"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self) -> tuple[type[PeerExchangeError], tuple[str, int, str]]:
        return (type(self), (self.reason, self.offset, self.detail))


class PeerMetadataTypeError(MeshstatsError, TypeError):
    """Peer metadata holds something a protobuf ``Struct`` cannot carry.

    Raised when encoding: a non-``str`` key, a value of an unsupported type (bytes,
    set, numpy ints, ...), a ``str`` with lone surrogates, an ``int`` too large for a
    double, or nesting deeper than ``MAX_DEPTH`` (which also stops cyclic containers).
    """


class ConfigError(MeshstatsError, ValueError):
    """A stats configuration is invalid; ``field`` names where (``metrics[2].dimensions``)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ExpressionError(MeshstatsError, ValueError):
    """An attribute expression failed to parse; ``column`` is 1-based."""

    def __init__(self, message: str, expression: str = "", column: int = 0) -> None:
        super().__init__(f"{message} (column {column} of {expression!r})" if column else message)
        self.expression = expression
        self.column = column


class MissingExtraError(MeshstatsError, ImportError):
    """An integration's framework is not installed; the message names the extra to install.

    >>> str(MissingExtraError("grpc", "grpc"))
    "meshstats.grpc needs the 'grpc' package: pip install 'meshstats[grpc]'"
    """

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"meshstats.{extra} needs the {module!r} package: pip install 'meshstats[{extra}]'",
            name=module,
        )
        self.extra = extra


class StoreFileError(MeshstatsError, ValueError):
    """A file that cannot be opened as a shared store (``Store.shared``); nothing was changed.

    >>> err = StoreFileError("/dev/shm/x", "not a meshstats store (no magic at offset 0)")
    >>> str(err), err.path
    ('/dev/shm/x: not a meshstats store (no magic at offset 0)', '/dev/shm/x')
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class DecoderFinishedError(MeshstatsError, RuntimeError):
    """``PeerPrefixDecoder.feed()`` after the decoder reached ``done`` or ``not_mesh``.

    >>> raise DecoderFinishedError("feed() after the decoder finished ('done')")
    Traceback (most recent call last):
    meshstats.errors.DecoderFinishedError: feed() after the decoder finished ('done')
    """
