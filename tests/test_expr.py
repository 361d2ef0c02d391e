"""The attribute expression language: Mixer style, the CEL subset, errors with columns."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import meshstats.expr
from meshstats.errors import ExpressionError
from meshstats.expr import EvaluationFailed, compile_expression, to_label

ATTRS = {
    "source.workload.name": "productpage-v1",
    "source.labels": {"app": "productpage", "version": "v1"},
    "destination.service.host": "",
    "connection.mtls": True,
    "response.code": 503,
    "request.headers": {"host": "reviews:9080", "x-count": "7"},
    "request.protocol": "HTTP/1.1",
    "xds.node.metadata": {"LABELS": {"version": "v2"}, "WORKLOAD_NAME": "reviews-v2"},
    "xds.cluster_metadata": {
        "filter_metadata": {"istio": {"services": [{"host": "reviews.default.svc", "name": "r"}]}}
    },
    "filter_state.upstream_peer": {"labels": {"role": "db"}, "service": "ratings"},
}


def label(source: str) -> str:
    return compile_expression(source).label(ATTRS)


def test_doctests() -> None:
    assert doctest.testmod(meshstats.expr).failed == 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('source.workload.name | "unknown"', "productpage-v1"),
        ('destination.workload.name | "unknown"', "unknown"),
        # Mixer's `|` falls through on a missing value only: an empty string is a value
        ('destination.service.host | request.headers["host"]', ""),
        ('destination.service.name | request.headers["host"]', "reviews:9080"),
        ('source.labels["app"] | "x"', "productpage"),
        ("source.labels['version']", "v1"),
        ('conditional(connection.mtls, "mutual_tls", "none")', "mutual_tls"),
        ("connection.mtls ? 'mutual_tls' : 'none'", "mutual_tls"),
        ("string(response.code)", "503"),
        ("response.code", "503"),
        ("response.code >= 500 && response.code < 600", "true"),
        ("response.code == 503 || false", "true"),
        ("!(response.code != 503)", "true"),
        ("int(request.headers['x-count']) + 1", "8"),
        ("xds.node.metadata.LABELS.version", "v2"),
        ("'_' + xds.node.metadata['WORKLOAD_NAME']", "_reviews-v2"),
        ("xds.cluster_metadata.filter_metadata.istio.services[0].host", "reviews.default.svc"),
        ("filter_state.upstream_peer.labels['role']", "db"),
        ("filter_state.upstream_peer.service", "ratings"),
        ("has(request.headers.host) ? request.headers.host : 'none'", "reviews:9080"),
        ("has(request.headers.nope) ? 'yes' : 'no'", "no"),
        ("request.protocol.startsWith('HTTP/')", "true"),
        ("request.headers.host.contains(':90')", "true"),
        ("size(source.labels)", "2"),
        ('"a\\"b" + \'\\u00e9\'', 'a"bé'),
        ("1.5 * 2", "3"),
        ("0x10 - 1", "15"),
        ("7 / 2", "3"),
    ],
)
def test_evaluates(source: str, expected: str) -> None:
    assert label(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "destination.workload.name",  # missing attribute
        "source.labels['nope']",  # missing key
        "response.code + 'x'",  # type error
        "request.protocol ? 'a' : 'b'",  # CEL has no truthiness
        "xds.cluster_metadata.filter_metadata.istio.services[3].host",  # out of range
        "1 / 0",
        "int('12x')",
    ],
)
def test_runtime_failure_prints_unknown(source: str) -> None:
    expr = compile_expression(source)
    assert expr.label(ATTRS) == "unknown"
    with pytest.raises(EvaluationFailed):
        expr.evaluate(ATTRS)


@pytest.mark.parametrize(
    ("source", "column", "message"),
    [
        ("", 1, "empty expression"),
        ("a +", 4, "expected a value"),
        ("a ? b", 6, "expected ':'"),
        ("foo(1)", 1, "unknown function 'foo'"),
        ("has(a, b)", 1, "takes 1 argument"),
        ('"abc', 1, "unterminated string"),
        ("a.b @ c", 5, "unexpected character '@'"),
        ("a.(b)", 3, "expected a field name"),
        ("(a", 3, "expected ')'"),
        ("a b", 3, "unexpected token"),
        ("'\\q'", 2, "unknown escape"),
        ("x.frob('a')", 3, "unknown method 'frob'"),
    ],
)
def test_parse_errors_name_the_column(source: str, column: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    assert info.value.column == column
    assert message in str(info.value)
    assert f"column {column}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_attributes_read_are_reported() -> None:
    expr = compile_expression(
        "conditional(has(request.headers.host), request.headers.host, source.workload.name)"
    )
    assert expr.attributes == {"request.headers", "source.workload.name"}
    assert expr.depends_only_on(["request"]) is False
    assert expr.depends_only_on(["request", "source"]) is True
    assert compile_expression("'constant'").constant is True
    assert compile_expression("'a' + 'b'").attributes == frozenset()


def test_unknown_roots_are_found_longest_first() -> None:
    expr = compile_expression("my.custom.attr.key")
    assert expr.evaluate({"my.custom.attr": {"key": "v"}}) == "v"
    assert expr.evaluate({"my.custom.attr.key": "flat"}) == "flat"
    assert expr.evaluate({"my": {"custom": {"attr": {"key": "nested"}}}}) == "nested"


def test_to_label_prints_like_cel() -> None:
    assert to_label(True) == "true"
    assert to_label(200) == "200"
    assert to_label(200.0) == "200"
    assert to_label(0.25) == "0.25"
    assert to_label(b"ab") == "ab"
    assert to_label(None) == "null"
    with pytest.raises(EvaluationFailed):
        to_label({"a": 1})


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(_text)
def test_string_literals_round_trip(value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    assert compile_expression(f'"{escaped}"').evaluate({}) == value


@given(st.one_of(st.none(), _text), _text)
def test_pipe_is_first_present(first: str | None, second: str) -> None:
    attrs = {} if first is None else {"a.b": first}
    expected = second if first is None else first
    assert compile_expression("a.b | c.d").evaluate({**attrs, "c.d": second}) == expected


@given(
    st.integers(-(2**31), 2**31),
    st.integers(-(2**31), 2**31),
    st.sampled_from(["+", "-", "*", "==", "!=", "<", "<=", ">", ">="]),
)
def test_integer_operators_agree_with_python(x: int, y: int, op: str) -> None:
    value = compile_expression(f"a {op} b").evaluate({"a": x, "b": y})
    assert value == eval(f"x {op} y")  # noqa: S307 - the oracle is Python's own arithmetic


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_labels_read_back(value: float) -> None:
    assert float(to_label(value)) == value


def test_failures_do_not_accumulate_tracebacks() -> None:
    """The shared failure instance must not keep a growing chain of frames alive."""
    expr = compile_expression('a.b.c | "x"')
    for _ in range(1000):
        assert expr.evaluate({}) == "x"
    tb, depth = meshstats.expr._FAIL.__traceback__, 0
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    assert depth < 10


def _literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@given(st.one_of(st.none(), _text), st.one_of(st.none(), _text), _text)
def test_pipe_chains_agree_with_the_general_path(a: str | None, b: str | None, c: str) -> None:
    """`x | "lit"` has a fast path; it must agree with the general `x | y` path."""
    attrs = {k: v for k, v in (("a.a", a), ("b.b", b), ("c.c", c)) if v is not None}
    expected = a if a is not None else c
    assert compile_expression(f"a.a | {_literal(c)}").label(attrs) == expected
    assert compile_expression("a.a | c.c").label(attrs) == expected
    chained = compile_expression("a.a | b.b | c.c").label(attrs)
    assert chained == next(v for v in (a, b, c) if v is not None)
