"""The attribute expression language: parsed once into closures, evaluated many times.

It accepts both dialects Istio configurations use for label values:

* the seed's Mixer style: ``source.workload.name | "unknown"``,
  ``conditional(connection.mtls, "mutual_tls", "none")``, ``source.labels["app"]``;
* the CEL subset of today's Istio: ``has(x) ? x : "y"``, ``==``, ``!=``, ``<``, ``&&``, ``||``,
  ``!``, ``+`` (string concatenation and integer addition), indexing with ``["k"]``/``['k']``,
  field selection into maps (``xds.node.metadata.LABELS.version``), ``string()``, ``int()``,
  ``size()`` and the string methods ``startsWith``, ``endsWith``, ``contains``.

>>> e = compile_expression('request.headers["host"] | "unknown"')
>>> e.evaluate({"request.headers": {"host": "reviews:9080"}})
'reviews:9080'
>>> e.evaluate({})
'unknown'
>>> compile_expression("has(response.code) ? string(response.code) : '0'").evaluate({})
'0'
>>> sorted(compile_expression("xds.node.metadata['LABELS'].app + '-x'").attributes)
['xds.node.metadata']

A missing attribute (or a type error) at run time makes the whole expression *fail*: ``a | b``
then yields ``b``, and a failing label expression prints ``unknown``, as Istio does
(:meth:`Expression.label`). A parse error raises :class:`~meshstats.errors.ExpressionError`
naming the 1-based column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ExpressionError

__all__ = ["Expression", "compile_expression", "to_label", "EvaluationFailed"]

Attributes = Mapping[str, Any]
Evaluator = Callable[[Attributes], Any]


class EvaluationFailed(Exception):
    """Raised inside evaluation when a value cannot be produced (missing attribute, bad type).

    Callers normally never see it: ``|`` catches it and :meth:`Expression.label` turns it into
    ``unknown``. One shared instance is raised, so failing costs no allocation; every raise
    clears its traceback first, or the instance would keep every failing frame alive.
    """


_FAIL = EvaluationFailed()


def _fail() -> Any:
    raise _FAIL.with_traceback(None)


# ---------------------------------------------------------------------------------------------
# Tokens


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<float>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<int>0x[0-9a-fA-F]+|\d+)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[|?:!<>+\-*/%()\[\].,])
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # "int", "float", "str", "ident", "op", "end"
    text: str
    col: int  # 1-based


def _unquote(raw: str, source: str, col: int) -> str:
    body, out, i = raw[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "uU":
            width = 4 if nxt == "u" else 8
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ExpressionError("bad unicode escape", source, col + i + 1)
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise ExpressionError(f"unknown escape \\{nxt}", source, col + i + 1)
    return "".join(out)


def _tokenize(source: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if not m:
            ch = source[pos]
            what = "unterminated string" if ch in "\"'" else f"unexpected character {ch!r}"
            raise ExpressionError(what, source, pos + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, m.group(), pos + 1))
        pos = m.end()
    tokens.append(_Tok("end", "", len(source) + 1))
    return tokens


# ---------------------------------------------------------------------------------------------
# Attribute vocabulary: flat names that may contain dots. A dotted path is split at the
# longest known name; what follows indexes into the value. Unknown roots are tried longest
# first at run time, so user-supplied attributes work too.

KNOWN_ATTRIBUTES: frozenset[str] = frozenset(
    """
    context.reporter.kind context.protocol context.proxy_error_code context.reporter.uid
    source.workload.name source.workload.namespace source.workload.uid source.principal
    source.labels source.name source.namespace source.uid source.ip source.address source.port
    source.cluster.id source.owner source.canonical_service source.canonical_revision
    destination.workload.name destination.workload.namespace destination.workload.uid
    destination.principal destination.labels destination.name destination.namespace
    destination.uid destination.ip destination.address destination.port destination.cluster.id
    destination.owner destination.service.host destination.service.name
    destination.service.namespace destination.service.uid destination.canonical_service
    destination.canonical_revision
    api.protocol api.service api.version api.operation
    request.path request.url_path request.host request.scheme request.method request.headers
    request.headers_bytes request.referer request.useragent request.time request.id
    request.protocol request.query request.duration request.size request.total_size
    response.code response.code_details response.flags response.grpc_status response.headers
    response.headers_bytes response.trailers response.size response.total_size
    response.backend_latency response.duration
    connection.id connection.mtls connection.requested_server_name connection.tls_version
    connection.subject_local_certificate connection.subject_peer_certificate
    connection.dns_san_local_certificate connection.dns_san_peer_certificate
    connection.uri_san_local_certificate connection.uri_san_peer_certificate
    connection.sha256_peer_certificate_digest connection.termination_details
    connection.transport_failure_reason connection.sent.bytes connection.received.bytes
    upstream.address upstream.port upstream.tls_version upstream.uri_san_local_certificate
    upstream.uri_san_peer_certificate upstream.dns_san_local_certificate
    upstream.dns_san_peer_certificate upstream.local_address upstream.transport_failure_reason
    upstream.request_attempt_count upstream.locality
    xds.node xds.node.id xds.node.metadata xds.cluster_name xds.cluster_metadata
    xds.listener_direction xds.listener_metadata xds.route_name xds.route_metadata
    xds.virtual_host_name xds.upstream_host_metadata xds.filter_chain_name
    filter_state filter_state.upstream_peer filter_state.downstream_peer
    upstream_peer downstream_peer node.metadata metadata
    """.split()
)


def _split_path(parts: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Candidate (root, rest...) splits of a dotted path, best first."""
    known = [n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in KNOWN_ATTRIBUTES]
    order = known[:1] if known else list(range(len(parts), 0, -1))
    return tuple((".".join(parts[:n]), *parts[n:]) for n in order)


def _index(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        try:
            return value[key]
        except (KeyError, TypeError):
            raise _FAIL.with_traceback(None) from None
    if isinstance(value, (list, tuple)) and type(key) is int and -len(value) <= key < len(value):
        return value[key]
    raise _FAIL.with_traceback(None)


def _path_evaluator(parts: tuple[str, ...]) -> Evaluator:
    candidates = _split_path(parts)
    if len(candidates) == 1:
        root, *rest = candidates[0]
        if not rest:

            def flat(attrs: Attributes) -> Any:
                try:
                    return attrs[root]
                except KeyError:
                    raise _FAIL.with_traceback(None) from None

            return flat

        def nested(attrs: Attributes) -> Any:
            try:
                value = attrs[root]
            except KeyError:
                raise _FAIL.with_traceback(None) from None
            for key in rest:
                value = _index(value, key)
            return value

        return nested

    def search(attrs: Attributes) -> Any:
        for root, *rest in candidates:
            if root in attrs:
                value = attrs[root]
                for key in rest:
                    value = _index(value, key)
                return value
        raise _FAIL.with_traceback(None)

    return search


# ---------------------------------------------------------------------------------------------
# Printing and conversions, as CEL prints values for Envoy's stats tags.


def to_label(value: Any) -> str:
    """The text a value becomes as a label value (CEL's printing rules)."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None:
        return "null"
    raise _FAIL.with_traceback(None)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 2**63:
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            raise _FAIL.with_traceback(None) from None
    raise _FAIL.with_traceback(None)


def _truth(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _FAIL.with_traceback(None)  # CEL has no truthiness: a non-bool condition is an error


# ---------------------------------------------------------------------------------------------
# Parser: recursive descent producing (evaluator, attributes read, is_constant).


@dataclass(frozen=True)
class _Node:
    fn: Evaluator
    attrs: frozenset[str]
    path: tuple[str, ...] | None = None  # set while the node is a bare dotted identifier path
    const: bool = False
    root: str | None = None  # set when the node is exactly one flat attribute lookup


def _const(value: Any) -> _Node:
    return _Node(lambda attrs: value, frozenset(), const=True)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0

    # -- helpers
    @property
    def tok(self) -> _Tok:
        return self.tokens[self.pos]

    def error(self, message: str, tok: _Tok | None = None) -> ExpressionError:
        tok = tok or self.tok
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"{message}, found {found}", self.source, tok.col)

    def accept(self, *ops: str) -> _Tok | None:
        if self.tok.kind == "op" and self.tok.text in ops:
            self.pos += 1
            return self.tokens[self.pos - 1]
        return None

    def expect(self, op: str) -> _Tok:
        tok = self.accept(op)
        if tok is None:
            raise self.error(f"expected {op!r}")
        return tok

    # -- grammar, loosest binding first
    def parse(self) -> _Node:
        if self.tok.kind == "end":
            raise self.error("empty expression")
        node = self.ternary()
        if self.tok.kind != "end":
            raise self.error("unexpected token")
        return _finish(node)

    def ternary(self) -> _Node:
        cond = self.pipe()
        if not self.accept("?"):
            return cond
        yes = self.ternary()
        self.expect(":")
        no = self.ternary()
        c, y, n = cond.fn, yes.fn, no.fn
        return _Node(lambda a: y(a) if _truth(c(a)) else n(a), cond.attrs | yes.attrs | no.attrs)

    def pipe(self) -> _Node:
        node = self.logic_or()
        while self.accept("|"):
            right = self.logic_or()
            node = _Node(_fallback(node, right), node.attrs | right.attrs)
        return node

    def logic_or(self) -> _Node:
        node = self.logic_and()
        while self.accept("||"):
            right = self.logic_and()
            node = _Node(_either(node.fn, right.fn), node.attrs | right.attrs)
        return node

    def logic_and(self) -> _Node:
        node = self.equality()
        while self.accept("&&"):
            right = self.equality()
            node = _Node(_both(node.fn, right.fn), node.attrs | right.attrs)
        return node

    def equality(self) -> _Node:
        node = self.relation()
        while tok := self.accept("==", "!="):
            right = self.relation()
            node = _Node(_equality(tok.text, node.fn, right.fn), node.attrs | right.attrs)
        return node

    def relation(self) -> _Node:
        node = self.additive()
        while tok := self.accept("<", "<=", ">", ">="):
            right = self.additive()
            node = _Node(_compare(tok.text, node.fn, right.fn), node.attrs | right.attrs)
        return node

    def additive(self) -> _Node:
        node = self.multiplicative()
        while tok := self.accept("+", "-"):
            right = self.multiplicative()
            node = _Node(_arith(tok.text, node.fn, right.fn), node.attrs | right.attrs)
        return node

    def multiplicative(self) -> _Node:
        node = self.unary()
        while tok := self.accept("*", "/", "%"):
            right = self.unary()
            node = _Node(_arith(tok.text, node.fn, right.fn), node.attrs | right.attrs)
        return node

    def unary(self) -> _Node:
        if self.accept("!"):
            inner = self.unary()
            f = inner.fn
            return _Node(lambda a: not _truth(f(a)), inner.attrs)
        if self.accept("-"):
            inner = self.unary()
            f = inner.fn

            def negate(a: Attributes) -> Any:
                v = f(a)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return -v
                raise _FAIL.with_traceback(None)

            return _Node(negate, inner.attrs)
        return self.postfix()

    def postfix(self) -> _Node:
        node = self.primary()
        while True:
            if self.accept("."):
                tok = self.tok
                if tok.kind != "ident":
                    raise self.error("expected a field name after '.'")
                self.pos += 1
                if self.tok.kind == "op" and self.tok.text == "(":
                    node = self.method(_finish(node), tok)
                elif node.path is not None:
                    node = _Node(node.fn, node.attrs, node.path + (tok.text,))
                else:
                    name = tok.text
                    node = _Node(_subscript(node.fn, lambda a: name), node.attrs)
            elif self.accept("["):
                base = _finish(node)
                key = self.ternary()
                self.expect("]")
                node = _Node(_subscript(base.fn, key.fn), base.attrs | key.attrs)
            else:
                return _finish(node)

    def primary(self) -> _Node:
        tok = self.tok
        self.pos += 1
        if tok.kind == "int":
            return _const(int(tok.text, 0))
        if tok.kind == "float":
            return _const(float(tok.text))
        if tok.kind == "str":
            return _const(_unquote(tok.text, self.source, tok.col))
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return _const(tok.text == "true")
            if tok.text == "null":
                return _const(None)
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(tok)
            return _Node(lambda a: _fail(), frozenset(), (tok.text,))
        if tok.kind == "op" and tok.text == "(":
            node = self.ternary()
            self.expect(")")
            return _finish(node)
        self.pos -= 1
        raise self.error("expected a value")

    def arguments(self) -> list[_Node]:
        self.expect("(")
        args: list[_Node] = []
        if not self.accept(")"):
            while True:
                args.append(_finish(self.ternary()))
                if self.accept(")"):
                    break
                self.expect(",")
        return args

    def call(self, name: _Tok) -> _Node:
        args = self.arguments()
        spec = _FUNCTIONS.get(name.text)
        if spec is None:
            raise ExpressionError(f"unknown function {name.text!r}", self.source, name.col)
        arity, build = spec
        if len(args) != arity:
            raise ExpressionError(
                f"{name.text}() takes {arity} argument(s), got {len(args)}", self.source, name.col
            )
        return _Node(build(*(a.fn for a in args)), frozenset().union(*(a.attrs for a in args)))

    def method(self, target: _Node, name: _Tok) -> _Node:
        args = self.arguments()
        build = _METHODS.get(name.text)
        if build is None or len(args) != 1:
            raise ExpressionError(f"unknown method {name.text!r}", self.source, name.col)
        tf, af = target.fn, args[0].fn
        return _Node(build(tf, af), target.attrs | args[0].attrs)


def _finish(node: _Node) -> _Node:
    """Turn a bare identifier path into an attribute lookup."""
    if node.path is None:
        return node
    candidates = _split_path(node.path)
    root = candidates[0][0] if len(candidates) == 1 and len(candidates[0]) == 1 else None
    return _Node(_path_evaluator(node.path), frozenset(c[0] for c in candidates), root=root)


def _fallback(first: _Node, second: _Node) -> Evaluator:
    """``a | b``: ``a`` unless it is missing or fails (Mixer's rule), else ``b``."""
    if first.root is not None and second.const:
        # The shape of nearly every default label: `attribute | "literal"`, one dict lookup.
        root, literal = first.root, second.fn({})

        def attribute_or_literal(a: Attributes) -> Any:
            try:
                return a[root]
            except KeyError:
                return literal

        return attribute_or_literal
    ff, sf = first.fn, second.fn

    def fallback(a: Attributes) -> Any:
        try:
            return ff(a)
        except EvaluationFailed:
            return sf(a)

    return fallback


def _either(lf: Evaluator, rf: Evaluator) -> Evaluator:
    return lambda a: _truth(lf(a)) or _truth(rf(a))


def _both(lf: Evaluator, rf: Evaluator) -> Evaluator:
    return lambda a: _truth(lf(a)) and _truth(rf(a))


def _subscript(base: Evaluator, key: Evaluator) -> Evaluator:
    return lambda a: _index(base(a), key(a))


def _equality(op: str, lf: Evaluator, rf: Evaluator) -> Evaluator:
    if op == "==":
        return lambda a: _equal(lf(a), rf(a))
    return lambda a: not _equal(lf(a), rf(a))


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, bool) != isinstance(y, bool):
        return False
    return bool(x == y)


def _compare(op: str, lf: Evaluator, rf: Evaluator) -> Evaluator:
    def compare(a: Attributes) -> bool:
        x, y = lf(a), rf(a)
        numbers = (int, float)
        same = (isinstance(x, str) and isinstance(y, str)) or (
            isinstance(x, numbers)
            and isinstance(y, numbers)
            and not isinstance(x, bool)
            and not isinstance(y, bool)
        )
        if not same:
            raise _FAIL.with_traceback(None)
        if op == "<":
            return bool(x < y)
        if op == "<=":
            return bool(x <= y)
        if op == ">":
            return bool(x > y)
        return bool(x >= y)

    return compare


def _arith(op: str, lf: Evaluator, rf: Evaluator) -> Evaluator:
    def arith(a: Attributes) -> Any:
        x, y = lf(a), rf(a)
        if op == "+" and isinstance(x, str) and isinstance(y, str):
            return x + y
        if op == "+" and isinstance(x, list) and isinstance(y, list):
            return x + y
        if (
            not isinstance(x, (int, float))
            or not isinstance(y, (int, float))
            or isinstance(x, bool)
            or isinstance(y, bool)
        ):
            raise _FAIL.with_traceback(None)
        if op == "+":
            return x + y
        if op == "-":
            return x - y
        if op == "*":
            return x * y
        if y == 0:
            raise _FAIL.with_traceback(None)
        if op == "/":
            return x // y if isinstance(x, int) and isinstance(y, int) else x / y
        return x % y

    return arith


def _has(f: Evaluator) -> Evaluator:
    def has(a: Attributes) -> bool:
        try:
            f(a)
        except EvaluationFailed:
            return False
        return True

    return has


def _conditional(c: Evaluator, x: Evaluator, y: Evaluator) -> Evaluator:
    return lambda a: x(a) if _truth(c(a)) else y(a)


def _size(f: Evaluator) -> Evaluator:
    def size(a: Attributes) -> int:
        v = f(a)
        if isinstance(v, (str, bytes, list, tuple, Mapping)):
            return len(v)
        raise _FAIL.with_traceback(None)

    return size


_FUNCTIONS: dict[str, tuple[int, Callable[..., Evaluator]]] = {
    "has": (1, _has),
    "conditional": (3, _conditional),
    "string": (1, lambda f: lambda a: to_label(f(a))),
    "int": (1, lambda f: lambda a: _to_int(f(a))),
    "size": (1, _size),
}


def _string_method(test: Callable[[str, str], bool]) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def build(tf: Evaluator, af: Evaluator) -> Evaluator:
        def method(a: Attributes) -> bool:
            s, arg = tf(a), af(a)
            if not isinstance(s, str) or not isinstance(arg, str):
                raise _FAIL.with_traceback(None)
            return test(s, arg)

        return method

    return build


_METHODS: dict[str, Callable[[Evaluator, Evaluator], Evaluator]] = {
    "startsWith": _string_method(str.startswith),
    "endsWith": _string_method(str.endswith),
    "contains": _string_method(lambda s, sub: sub in s),
}


# ---------------------------------------------------------------------------------------------
# Public face


@dataclass(frozen=True)
class Expression:
    """A compiled expression.

    ``attributes`` names the attribute roots it reads, so callers can tell whether it depends
    only on the peer and the local node (cacheable per peer) or on the request.
    """

    source: str
    attributes: frozenset[str]
    constant: bool
    _fn: Evaluator

    def evaluate(self, attrs: Attributes) -> Any:
        """The value, or raise :class:`EvaluationFailed`."""
        return self._fn(attrs)

    def label(self, attrs: Attributes, default: str = "unknown") -> str:
        """The value printed as a label; ``default`` when evaluation fails."""
        try:
            value = self._fn(attrs)
        except EvaluationFailed:
            return default
        if type(value) is str:
            return value
        try:
            return to_label(value)
        except EvaluationFailed:
            return default

    def depends_only_on(self, roots: Iterable[str]) -> bool:
        """True when every attribute read starts with one of ``roots`` (dotted prefixes)."""
        prefixes = tuple(roots)
        return all(
            any(name == p or name.startswith(p + ".") for p in prefixes) for name in self.attributes
        )


def compile_expression(source: str) -> Expression:
    """Parse ``source`` once; raise :class:`ExpressionError` (with the column) if malformed."""
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be a string, got {type(source).__name__}")
    node = _Parser(source).parse()
    return Expression(source, node.attrs, node.const or not node.attrs, node.fn)
