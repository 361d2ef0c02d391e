"""The exposition budget (docs/store.md, "Exposition budget"), on both backends.

Charges are worked out here again from the contract's line shapes (``charge()`` below),
not taken from the store: a render's lines, every value at its widest.
"""

from __future__ import annotations

import doctest
from typing import Any

import pytest
from conftest import Backend

from meshstats.errors import DuplicateMetricError, InvalidLabelsError, InvalidMetricError

OVERFLOW = "__overflow__"
U64_MAX = 2**64 - 1
# The widest values: 20 digits, and a double that needs all of %.17g (24 characters).
U64_WIDTH, DOUBLE_WIDTH = 20, 24
WIDEST_DOUBLE = -2.2250738585072014e-308
BUDGET_FAMILY = "meshstats_exposition_budget_overflow_total"
BUDGET_HELP = (
    "Label sets folded into the overflow series because the store reached max_exposition_bytes."
)


def escaped_len(value: str) -> int:
    return len(value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").encode())


def bound_text(bound: float) -> str:
    # Enough for the bounds used here (halves and integers): the store's own rule is
    # the shortest round-trip of %.15g..%.17g.
    return str(int(bound)) if bound.is_integer() else repr(bound)


def charge(
    kind: str,
    name: str,
    label_names: tuple[str, ...],
    values: tuple[str, ...],
    buckets: tuple[float, ...] = (),
) -> int:
    """The contract's charge: the series' lines in the wider of the two formats, every
    value at its widest; a metric without labels is not charged."""
    if not label_names:
        return 0
    block = sum(len(n) + 3 + escaped_len(v) for n, v in zip(label_names, values))
    block += len(label_names) - 1  # commas
    if kind == "counter":
        sample = name if name.endswith("_total") else name + "_total"  # OpenMetrics adds it
        return len(f"{sample}{{}} ") + block + U64_WIDTH + 1
    if kind == "gauge":
        return len(f"{name}{{}} ") + block + DOUBLE_WIDTH + 1
    les = [bound_text(b) for b in buckets] + ["+Inf"]
    total = sum(len(f'{name}_bucket{{,le="{le}"}} ') + block + U64_WIDTH + 1 for le in les)
    total += len(f"{name}_sum{{}} ") + block + DOUBLE_WIDTH + 1
    return total + len(f"{name}_count{{}} ") + block + U64_WIDTH + 1


def test_default_budget(backend: Backend) -> None:
    assert backend.store.DEFAULT_MAX_EXPOSITION_BYTES == 256 * 1024 * 1024
    assert backend.store.Store().max_exposition_bytes == 256 * 1024 * 1024
    store = backend.store.Store(max_exposition_bytes=1000)
    assert store.max_exposition_bytes == 1000 and store.exposition_bytes() == 0
    # As max_series: any int >= 1, clamped to what a u64 holds (a budget never reached).
    assert backend.store.Store(max_exposition_bytes=2**70).max_exposition_bytes == U64_MAX


@pytest.mark.parametrize("bad", [0, -1, "1", 1.5, None])
def test_budget_must_be_an_int_of_at_least_one(backend: Backend, bad: Any) -> None:
    with pytest.raises(InvalidMetricError, match="max_exposition_bytes"):
        backend.store.Store(max_exposition_bytes=bad)


@pytest.mark.parametrize(
    ("kind", "name"), [("counter", "req_total"), ("counter", "req"), ("gauge", "g")]
)
def test_charge_is_the_widest_render(backend: Backend, kind: str, name: str) -> None:
    store = backend.store.Store()
    labels = ("a", "bb")
    metric = getattr(store, kind)(name, "Help.", labels)
    values = ('q"\\\n', "日本")  # escapes and multi-byte UTF-8 count as rendered
    before = len(store.render()), len(store.render(openmetrics=True))
    sid = store.series(metric, values)
    assert store.exposition_bytes() == charge(kind, name, labels, values)
    if kind == "counter":
        store.inc(sid, U64_MAX)
    else:
        store.set(sid, WIDEST_DOUBLE)
    text = len(store.render()) - before[0]
    om = len(store.render(openmetrics=True)) - before[1]
    assert om == store.exposition_bytes()  # exact: the charge is no looser than it must be
    # Text prints a counter without _total as named, six bytes shorter than OpenMetrics.
    assert text == store.exposition_bytes() - (6 if name == "req" else 0)


def test_histogram_charge(backend: Backend) -> None:
    store = backend.store.Store()
    buckets = (0.5, 1.0, 3600000.0)
    h = store.histogram("h", "", ("k",), buckets=buckets)
    before = len(store.render())
    sid = store.series(h, ("v\\",))
    assert store.exposition_bytes() == charge("histogram", "h", ("k",), ("v\\",), buckets)
    store.observe(sid, WIDEST_DOUBLE)  # every cumulative count is 1: 19 digits short each
    grown = len(store.render()) - before
    assert grown == store.exposition_bytes() - (U64_WIDTH - 1) * (len(buckets) + 2)


def probe_charges(backend: Backend, values: list[str]) -> list[int]:
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    out = []
    for v in values:
        before = store.exposition_bytes()
        store.series(m, (v,))
        out.append(store.exposition_bytes() - before)
    return out


@pytest.mark.parametrize("over", [0, 1])
def test_boundary_exactly_at_the_budget_and_one_byte_over(backend: Backend, over: int) -> None:
    ca, cb, cc = probe_charges(backend, ["aaaa", "bb", "c"])
    assert (ca, cb, cc) == tuple(
        charge("counter", "c_total", ("k",), (v,)) for v in "aaaa bb c".split()
    )
    store = backend.store.Store(max_exposition_bytes=ca + cb - over)
    m = store.counter("c_total", "", ("k",))
    a, b, c = (store.series(m, (v,)) for v in ("aaaa", "bb", "c"))
    assert (a, b, c) == (0, 1, 2)
    assert store.exposition_bytes() == store.max_exposition_bytes  # full to the byte
    assert store.series_count(m) == 2 and store.budget_overflow_count(m) == 1
    assert store.overflow_count(m) == 0  # max_series did not fold anything
    if over:  # b does not fit; c, a byte smaller, fits exactly
        assert store.labels(b) == (OVERFLOW,) and store.labels(c) == ("c",)
    else:  # b fits exactly; c does not
        assert store.labels(b) == ("bb",) and store.labels(c) == (OVERFLOW,)


def test_existing_series_keep_recording(backend: Backend) -> None:
    store = backend.store.Store(max_exposition_bytes=charge("counter", "c_total", ("k",), ("a",)))
    m = store.counter("c_total", "", ("k",))
    g = store.gauge("g", "", ("k",))
    a = store.series(m, ("a",))
    folded = [store.series(m, ("b",)), store.series(g, ("a",)), store.series(m, ("b",))]
    assert folded[0] == folded[2] != folded[1]
    assert store.series(m, ("a",)) == a  # found, not charged again
    store.inc(a, 2)
    store.inc(folded[0])
    assert store.value(a) == 2 and store.value(folded[0]) == 1
    assert store.budget_overflow_count(m) == 2 and store.budget_overflow_count(g) == 1
    assert store.series_count(g) == 0


def test_what_is_not_charged(backend: Backend) -> None:
    store = backend.store.Store(max_exposition_bytes=1)
    m = store.counter("c_total", "", ("k",))
    plain = store.gauge("up")
    # A metric without labels has one series, fixed at registration like its HELP line.
    assert store.series(plain, ()) == 0 and store.series_count(plain) == 1
    # The overflow series named by its own label set is not a fold, and is not charged.
    overflow = store.series(m, (OVERFLOW,))
    assert store.budget_overflow_count(m) == 0 and store.exposition_bytes() == 0
    assert store.series(m, ("a",)) == overflow and store.budget_overflow_count(m) == 1
    # A bad label set raises before the budget is consulted and is not counted.
    with pytest.raises(InvalidLabelsError):
        store.series(m, (1,))
    with pytest.raises(InvalidLabelsError):
        store.series(m, ("\ud800",))
    assert store.budget_overflow_count(m) == 1


def test_max_series_is_checked_first(backend: Backend) -> None:
    budget = charge("counter", "c_total", ("k",), ("a",))
    store = backend.store.Store(max_exposition_bytes=budget)
    m = store.counter("c_total", "", ("k",), max_series=1)
    store.series(m, ("a",))
    store.series(m, ("b",))  # over both limits: the metric's own limit is named
    assert store.overflow_count(m) == 1 and store.budget_overflow_count(m) == 0


def test_budget_family_rendered_and_in_snapshot(backend: Backend) -> None:
    store = backend.store.Store(max_exposition_bytes=60)
    c = store.counter("c_total", "", ("k",), max_series=1)
    store.inc(store.series(c, ("a",)))  # 36 bytes
    store.series(c, ("b",))  # max_series
    g = store.gauge("g", "", ("k",))
    store.set(store.series(g, ("b",)), 2.5)  # 34 more: over 60
    assert store.render() == (
        b"# HELP c_total \n# TYPE c_total counter\n"
        b'c_total{k="a"} 1\nc_total{k="__overflow__"} 0\n'
        b'# HELP g \n# TYPE g gauge\ng{k="__overflow__"} 2.5\n'
        b"# HELP meshstats_exposition_budget_overflow_total " + BUDGET_HELP.encode() + b"\n"
        b"# TYPE meshstats_exposition_budget_overflow_total counter\n"
        b'meshstats_exposition_budget_overflow_total{metric="g"} 1\n'
        b"# HELP meshstats_series_overflow_total Label sets folded into the overflow series "
        b"because the metric reached max_series.\n"
        b"# TYPE meshstats_series_overflow_total counter\n"
        b'meshstats_series_overflow_total{metric="c_total"} 1\n'
    )
    om = store.render(openmetrics=True).decode()
    assert "# TYPE meshstats_exposition_budget_overflow counter\n" in om
    assert 'meshstats_exposition_budget_overflow_total{metric="g"} 1\n' in om
    entries = {entry[0]: entry for entry in store.snapshot()}
    assert entries[BUDGET_FAMILY] == (
        BUDGET_FAMILY, "counter", BUDGET_HELP, ("metric",), (), [(("g",), 1)]
    )  # fmt: skip
    assert [e[0] for e in store.snapshot()] == sorted(entries)


@pytest.mark.parametrize("name", [BUDGET_FAMILY, "meshstats_exposition_budget_overflow"])
def test_budget_family_names_are_reserved(backend: Backend, name: str) -> None:
    store = backend.store.Store()
    with pytest.raises(DuplicateMetricError) as info:
        store.gauge(name)
    assert info.value.name == name


def test_hidden_series_stay_charged(backend: Backend) -> None:
    """A record shows a hidden series again, so its bytes are never given back."""
    one = charge("counter", "c_total", ("k",), ("a",))
    store = backend.store.Store(max_exposition_bytes=one)
    m = store.counter("c_total", "", ("k",))
    a = store.series(m, ("a",))
    assert store.expire_idle() == 0 and store.expire_idle() == 1
    assert store.visible_series_count(m) == 0
    assert store.exposition_bytes() == one
    assert store.labels(store.series(m, ("b",))) == (OVERFLOW,)
    store.inc(a)
    assert store.visible_series_count(m) == 1


# ---- an adversarial workload: long label values on Istio's four HTTP metrics -----------

ISTIO_LABELS = (
    "reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version",
    "destination_service", "destination_canonical_service", "destination_canonical_revision",
    "destination_service_name", "destination_service_namespace", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
)  # fmt: skip
# Values a spoofing peer controls (its metadata), cut to 512 characters by the engine.
PEER_LABELS = {1, 2, 3, 4, 6, 7, 8}
# What a render holds beyond the budget, whatever the traffic: the 4 families' HELP and
# TYPE lines (~400 B), their overflow series (67 lines with 25 `__overflow__` values,
# ~1 KB each: ~65 KB) and the two fold families (~500 B). Stated, not computed.
FIXED_BYTES = 80_000


def attack_values(i: int) -> tuple[str, ...]:
    # 512 characters each, escapes and 2-byte UTF-8 mixed in: up to ~1 KB rendered.
    long = (f"{i}-" + 'é"\\' * 200)[:512]
    return tuple(long if n in PEER_LABELS else f"v{n}" for n in range(len(ISTIO_LABELS)))


@pytest.mark.parametrize("openmetrics", [False, True])
def test_render_stays_within_the_budget_under_attack(backend: Backend, openmetrics: bool) -> None:
    budget = 8 * 1024 * 1024
    store = backend.store.Store(max_exposition_bytes=budget)
    requests = store.counter("istio_requests_total", "Requests.", ISTIO_LABELS)
    hists = [
        store.histogram(f"istio_{name}", "H.", ISTIO_LABELS)
        for name in ("request_duration_milliseconds", "request_bytes", "response_bytes")
    ]
    for i in range(1000):
        values = attack_values(i)
        store.inc(store.series(requests, values), U64_MAX)
        for h in hists:
            store.observe(store.series(h, values), WIDEST_DOUBLE)
    size = len(store.render(openmetrics=openmetrics))
    assert store.exposition_bytes() <= budget
    assert size <= budget + FIXED_BYTES
    # The budget was used, not just respected: the charges are close to what renders.
    assert size >= 0.9 * budget
    folds = store.budget_overflow_count(requests) + sum(map(store.budget_overflow_count, hists))
    assert folds > 3000  # most of the 4,000 label sets were folded


def test_doctests(backend: Backend) -> None:
    results = doctest.testmod(backend.store)
    assert results.failed == 0 and results.attempted > 0
