"""Error messages, and the argument checks that raise them, shared by both backends.

The compiled modules (``_store_c``, ``_peer_exchange_c``) and their pure-Python twins
build every error message here, once, so that the same mistake gives the same exception
class *and* the same text whichever backend runs (the differential tests compare
``str(exc)``). Hot paths keep their own fast checks and only come here to explain a
failure; rare paths (defining a metric, checking label values) run the shared checks
themselves, so both backends check in the same order too.

>>> from meshstats._messages import check_definition
>>> check_definition("counter", "istio_requests_total", "Requests.", ["reporter"], (), None)
('Requests.', ('reporter',), (), None)
>>> check_definition("counter", "up", "", ("a", "a"), (), None)
Traceback (most recent call last):
...
meshstats.errors.InvalidMetricError: labels[1] = 'a' is given twice
"""

from __future__ import annotations

import math
import operator
import os
import re
import tempfile
from collections.abc import Sequence

from .errors import PEER_EXCHANGE_DETAILS as PEER_EXCHANGE_DETAILS
from .errors import (
    ArrayTypeError,
    BatchShapeError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidLabelsError,
    InvalidMetricError,
    InvalidSampleError,
)

__all__ = [
    "MAX_SIZE_LIMIT",
    "PEER_EXCHANGE_DETAILS",
    "array_dtype",
    "array_ndim",
    "array_type",
    "batch_length",
    "batch_negative_amount",
    "batch_nan",
    "batch_unknown_series",
    "batch_wrong_kind",
    "check_definition",
    "check_max_series",
    "check_max_size",
    "check_values",
    "duplicate_metric",
    "histogram_value_read",
    "not_an_id",
    "not_bytes_like",
    "not_contiguous",
    "amount_out_of_range",
    "not_an_int",
    "observe_nan",
    "real_arg",
    "unknown_metric",
    "unknown_series",
    "wrong_kind",
    "value_not_text",
    "metadata_not_mapping",
    "metadata_id_type",
    "key_not_str",
    "not_unicode",
    "int_too_large",
    "unsupported_value",
    "too_deep",
    "frame_too_large",
]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _type(value: object) -> str:
    return type(value).__name__


# ---- the store: ids and numbers --------------------------------------------------------------


def not_an_id(param: str, value: object) -> str:
    """``series``/``metric`` given as something without ``__index__`` (``UnknownSeriesError``)."""
    return f"{param} must be an int id, got {_type(value)}"


def unknown_metric(metric: int) -> str:
    return f"no metric with id {metric}"


def unknown_series(series: int) -> str:
    return f"no series with id {series}"


def wrong_kind(series: int, actual: str, wanted: str) -> str:
    """Recording or reading a series of another kind (``InvalidSampleError``)."""
    return f"series {series} is a {actual}, not a {wanted}"


def histogram_value_read(series: int) -> str:
    """``value()`` of a histogram series (``InvalidSampleError``)."""
    return f"series {series} is a histogram: read it with histogram_value()"


def not_an_int(param: str, value: object) -> str:
    return f"{param} must be an int, got {_type(value)}"


def amount_out_of_range(n: int) -> str:
    return f"n must be in [0, 2**64), got {n}"


def observe_nan() -> str:
    return "v must not be NaN"


def real_arg(value: object, param: str) -> float:
    """``float(value)`` for real numbers only, else ``InvalidSampleError`` naming ``param``.

    ``str``/``bytes`` are refused even though ``float("1.5")`` would take them: a label
    value passed where a sample belongs must not be recorded as a number.

    >>> real_arg(3, "v"), real_arg(True, "v")
    (3.0, 1.0)
    >>> real_arg("1.5", "v")
    Traceback (most recent call last):
    ...
    meshstats.errors.InvalidSampleError: v must be a real number, got str
    """
    if isinstance(value, (str, bytes, bytearray, memoryview)) or not (
        hasattr(value, "__float__") or hasattr(value, "__index__")
    ):
        raise InvalidSampleError(f"{param} must be a real number, got {_type(value)}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidSampleError(f"{param} must be a real number: {exc}") from None


# ---- the store: defining metrics and series --------------------------------------------------


def check_max_series(value: object, param: str) -> int:
    """An int >= 1 (``default_max_series``, ``max_series``), else ``InvalidMetricError``.

    >>> check_max_series(10, "max_series")
    10
    """
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidMetricError(not_an_int(param, value)) from None
    if number < 1:
        raise InvalidMetricError(f"{param} must be >= 1, got {number}")
    return number


def _check_buckets(buckets: object) -> tuple[float, ...]:
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise InvalidMetricError(f"buckets must be a sequence of numbers, got {_type(buckets)}")
    bounds: list[float] = []
    for i, bound in enumerate(buckets):
        try:
            value = real_arg(bound, f"buckets[{i}]")
        except InvalidSampleError as exc:
            raise InvalidMetricError(str(exc)) from None
        if not math.isfinite(value):
            raise InvalidMetricError(
                f"buckets[{i}] must be finite, got {value!r} (+Inf is implicit)"
            )
        if bounds and value <= bounds[-1]:
            raise InvalidMetricError(
                f"buckets must be strictly increasing: buckets[{i}] = {value!r} "
                f"after {bounds[-1]!r}"
            )
        bounds.append(value)
    if not bounds:
        raise InvalidMetricError("buckets must hold at least one bound")
    return tuple(bounds)


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_definition(
    kind: str,
    name: object,
    help_text: object,
    labels: object,
    buckets: object,
    max_series: object,
) -> tuple[str, tuple[str, ...], tuple[float, ...], int | None]:
    """Check a metric definition in the documented order; ``(help, labels, bounds, max)``.

    ``kind`` is ``"counter"``, ``"gauge"`` or ``"histogram"`` (only a histogram's
    ``buckets`` are read). ``max_series`` ``None`` stays ``None`` (the store's default).
    Everything raises ``InvalidMetricError``; duplicates are the store's to find.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidMetricError(f"name must match [a-zA-Z_:][a-zA-Z0-9_:]*, got {name!r}")
    if kind == "counter" and name == "_total":
        raise InvalidMetricError("name '_total' leaves an empty OpenMetrics family name")
    if not isinstance(help_text, str):
        raise InvalidMetricError(f"help must be a str, got {_type(help_text)}")
    if not _utf8_ok(help_text):
        raise InvalidMetricError("help must be encodable as UTF-8 (no lone surrogates)")
    if not isinstance(labels, (tuple, list)):
        raise InvalidMetricError(f"labels must be a tuple or list of str, got {_type(labels)}")
    names: list[str] = []
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
            raise InvalidMetricError(
                f"labels[{i}] must match [a-zA-Z_][a-zA-Z0-9_]*, got {label!r}"
            )
        if label.startswith("__"):
            raise InvalidMetricError(f"labels[{i}] = {label!r}: names starting '__' are reserved")
        if kind == "histogram" and label == "le":
            raise InvalidMetricError(f"labels[{i}] = 'le' is reserved for histogram buckets")
        if label in names:
            raise InvalidMetricError(f"labels[{i}] = {label!r} is given twice")
        names.append(str(label))
    bounds = _check_buckets(buckets) if kind == "histogram" else ()
    limit = None if max_series is None else check_max_series(max_series, "max_series")
    return help_text, tuple(names), bounds, limit


def per_process_labels(labels: object) -> tuple[object, ...]:
    """A per-process gauge's labels: the given ones, then ``pid`` (checked as any others)."""
    if not isinstance(labels, (tuple, list)):
        raise InvalidMetricError(f"labels must be a tuple or list of str, got {_type(labels)}")
    return (*labels, "pid")


def duplicate_metric(taken: str) -> str:
    """For ``DuplicateMetricError(message, name=taken)``."""
    return f"a metric family named {taken!r} is already registered"


def check_values(metric_name: str, label_names: Sequence[str], values: object) -> tuple[str, ...]:
    """Label values for a metric's labels, as plain ``str``; else ``InvalidLabelsError``.

    >>> check_values("c_total", ("code",), ["200"])
    ('200',)
    >>> check_values("c_total", ("code", "path"), ("200", 1))
    Traceback (most recent call last):
    ...
    meshstats.errors.InvalidLabelsError: values[1] (label 'path') must be a str, got int
    """
    if not isinstance(values, (tuple, list)):
        raise InvalidLabelsError(f"values must be a tuple or list of str, got {_type(values)}")
    if len(values) != len(label_names):
        raise InvalidLabelsError(
            f"values has {len(values)} items but metric {metric_name!r} has "
            f"{len(label_names)} labels {tuple(label_names)!r}"
        )
    key: list[str] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidLabelsError(
                f"values[{i}] (label {label_names[i]!r}) must be a str, got {_type(value)}"
            )
        if not _utf8_ok(value):
            raise InvalidLabelsError(
                f"values[{i}] (label {label_names[i]!r}) must be encodable as UTF-8"
            )
        key.append(value if type(value) is str else str.__str__(value))
    return tuple(key)


# ---- the store: batches ----------------------------------------------------------------------


def array_type(param: str, value: object) -> ArrayTypeError:
    return ArrayTypeError(
        f"{param} must be a 1-D buffer (numpy array, array.array, memoryview), got {_type(value)}"
    )


def array_ndim(param: str, ndim: int) -> ArrayTypeError:
    return ArrayTypeError(f"{param} must be 1-D, got {ndim}-D")


def array_dtype(param: str, floats: bool, fmt: str) -> ArrayTypeError:
    """``fmt`` is the buffer's struct format as the buffer protocol gives it."""
    accepted = "int32/int64/uint32/uint64" + ("/float32/float64" if floats else "")
    return ArrayTypeError(f"{param} must have dtype {accepted}, got format {fmt!r}")


def batch_length(other: str, n: int, m: int) -> BatchShapeError:
    return BatchShapeError(f"ids and {other} differ in length: {n} != {m}")


def batch_unknown_series(i: int, series: int) -> str:
    return f"ids[{i}] = {series} is not a known series"


def batch_wrong_kind(i: int, series: int, actual: str, wanted: str) -> str:
    return f"ids[{i}] = {series} is a {actual}, not a {wanted}"


def batch_negative_amount(i: int, amount: int) -> str:
    return f"amounts[{i}] = {amount} must be >= 0"


def batch_nan(i: int) -> str:
    return f"values[{i}] is NaN"


# ---- the peer-exchange codec -----------------------------------------------------------------

#: The 2 GiB cap keeps every offset within the C walker's 32-bit token fields.
MAX_SIZE_LIMIT = 0x7FFFFFFF


def check_max_size(max_size: object) -> int:
    """``max_size`` of the codec: an int in ``0..2**31-1``.

    >>> check_max_size(-1)
    Traceback (most recent call last):
    ...
    meshstats.errors.InvalidArgumentError: max_size must be in 0..2147483647, got -1
    """
    try:
        size = operator.index(max_size)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentTypeError(not_an_int("max_size", max_size)) from None
    if not 0 <= size <= MAX_SIZE_LIMIT:
        raise InvalidArgumentError(f"max_size must be in 0..{MAX_SIZE_LIMIT}, got {size}")
    return size


def not_bytes_like(param: str, value: object) -> InvalidArgumentTypeError:
    return InvalidArgumentTypeError(f"{param} must be a bytes-like object, got {_type(value)}")


def not_contiguous(param: str) -> InvalidArgumentTypeError:
    return InvalidArgumentTypeError(f"{param} must be a C-contiguous bytes-like object")


def value_not_text(value: object) -> InvalidArgumentTypeError:
    """``decode_peer_header(value)`` of another type."""
    return InvalidArgumentTypeError(f"value must be str, bytes or bytearray, got {_type(value)}")


# Encoding (all ``PeerMetadataTypeError``). Both encoders walk a mapping in its own order,
# key then value, so the first of several problems is the same one in both.


def metadata_not_mapping(value: object) -> str:
    return f"metadata must be a mapping, got {_type(value)}"


def metadata_id_type(value: object) -> str:
    return f"metadata_id must be str or None, got {_type(value)}"


def key_not_str(key: object) -> str:
    return f"Struct keys must be str, got {_type(key)}: {key!r:.80}"


def not_unicode(text: str, exc: UnicodeEncodeError) -> str:
    return f"string is not valid Unicode ({exc.reason} at index {exc.start}): {text[:40]!r}"


def int_too_large(value: int) -> str:
    return f"an int of {value.bit_length()} bits is too large for a double (number_value)"


def unsupported_value(value: object) -> str:
    return (
        "a Struct value must be None, bool, int, float, str, a mapping, list or tuple; "
        f"got {_type(value)}"
    )


def too_deep(max_depth: int) -> str:
    return f"metadata nests deeper than MAX_DEPTH={max_depth} (or contains itself)"


def frame_too_large() -> str:
    return "metadata is too large for a frame (4 GiB)"


# ---- shared stores (docs/store.md, "Shared stores") ------------------------------------

#: The directory a bare store name lives in: memory-backed where there is one.
SHARED_DIR = "/dev/shm"
#: Address space each process maps for a shared store: the file's largest size.
DEFAULT_SHARED_RESERVE = 1 << 36

FILE_NOT_A_STORE = "not a meshstats store (no magic at offset 0)"
FILE_TRUNCATED = "truncated: shorter than its head says (a copy cut short, or not ours)"


def file_version(found: int, supported: int) -> str:
    return f"a meshstats store of layout version {found}; this meshstats reads version {supported}"


def shared_store_path(path: object) -> str:
    """Where ``Store.shared(path)`` keeps its file: a bare name in ``/dev/shm`` (or the temp
    directory where there is none), any other path as given.

    >>> shared_store_path("app.store")
    '/dev/shm/app.store'
    >>> shared_store_path("./app.store"), shared_store_path("/var/run/app.store")
    ('./app.store', '/var/run/app.store')
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"path must be a str or os.PathLike, got {_type(path)}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"path must be a non-empty str path, got {text!r}")
    if os.sep in text:
        return text
    base = SHARED_DIR if os.path.isdir(SHARED_DIR) else tempfile.gettempdir()
    return os.path.join(base, text)


def check_reserve(reserve: object) -> int:
    if isinstance(reserve, bool) or not isinstance(reserve, int):
        raise InvalidArgumentTypeError(f"reserve must be an int, got {_type(reserve)}")
    if not 65536 <= reserve < 1 << 63:
        raise InvalidArgumentError(f"reserve must be >= 65536 bytes (and < 2**63), got {reserve}")
    return reserve - reserve % 65536


def feed_after_finish(state: str) -> str:
    return f"feed() after the decoder finished ({state!r}): make a new decoder per connection"
