"""Rendering: exact bytes for small stores (written from the format specs), then checks by
independent parsers (promtool, prometheus_client's text and OpenMetrics parsers)."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

import pytest
from conftest import Backend
from exposition_support import (
    openmetrics_samples,
    parse_openmetrics,
    promtool,
    same_values,
    text_samples,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats._render_py import render as render_snapshot

HOSTILE = ['say "hi"', "C:\\path\\", "line1\nline2", "ünïcödé ✓ 日本", "", '\\"\n\\n']


def istio_store(backend: Backend) -> Any:
    store = backend.store.Store()
    req = store.counter("istio_requests_total", "Total requests.", ("reporter", "response_code"))
    dur = store.histogram(
        "istio_request_duration_milliseconds", "Duration.", ("reporter",), buckets=(0.5, 1, 3600000)
    )
    build = store.gauge("istio_build", "Istio build.")
    store.gauge("empty_gauge", "Nothing yet.", ("x",))
    store.inc(store.series(req, ("destination", "200")), 7)
    store.inc(store.series(req, ("source", "503")))
    s = store.series(dur, ("destination",))
    for v in (0.5, 0.75, 2, 5000000):
        store.observe(s, v)
    store.set(store.series(build, ()), 1)
    return store


ISTIO_TEXT = """\
# HELP empty_gauge Nothing yet.
# TYPE empty_gauge gauge
# HELP istio_build Istio build.
# TYPE istio_build gauge
istio_build 1
# HELP istio_request_duration_milliseconds Duration.
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="destination",le="0.5"} 1
istio_request_duration_milliseconds_bucket{reporter="destination",le="1"} 2
istio_request_duration_milliseconds_bucket{reporter="destination",le="3600000"} 3
istio_request_duration_milliseconds_bucket{reporter="destination",le="+Inf"} 4
istio_request_duration_milliseconds_sum{reporter="destination"} 5000003.25
istio_request_duration_milliseconds_count{reporter="destination"} 4
# HELP istio_requests_total Total requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="destination",response_code="200"} 7
istio_requests_total{reporter="source",response_code="503"} 1
"""


def test_text_exact(backend: Backend) -> None:
    assert istio_store(backend).render() == ISTIO_TEXT.encode()


def test_openmetrics_exact(backend: Backend) -> None:
    expected = (
        ISTIO_TEXT.replace("# HELP istio_requests_total", "# HELP istio_requests").replace(
            "# TYPE istio_requests_total", "# TYPE istio_requests"
        )
        + "# EOF\n"
    )
    assert istio_store(backend).render(openmetrics=True) == expected.encode()
    assert istio_store(backend).render(False) == ISTIO_TEXT.encode()


def test_render_of_snapshot_matches_store_render(backend: Backend) -> None:
    store = istio_store(backend)
    for om in (False, True):
        assert render_snapshot(store.snapshot(), openmetrics=om) == store.render(openmetrics=om)


def test_empty_store(backend: Backend) -> None:
    store = backend.store.Store()
    assert store.render() == b""
    assert store.render(openmetrics=True) == b"# EOF\n"


def test_families_sorted_and_one_header_each(backend: Backend) -> None:
    store = backend.store.Store()
    for name in ("zeta", "alpha_x", "Beta", "alpha", "_under", "alpha:b"):
        m = store.gauge(name, "h.", ("k",))
        store.set(store.series(m, ("1",)), 1)
        store.set(store.series(m, ("2",)), 2)
    lines = store.render().decode().splitlines()
    helps = [line.split()[2] for line in lines if line.startswith("# HELP")]
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    # Byte order, written out: 'B' (0x42) < '_' (0x5F) < 'a'; ':' (0x3A) < '_' after "alpha".
    assert helps == ["Beta", "_under", "alpha", "alpha:b", "alpha_x", "zeta"]
    assert types == helps
    assert len(lines) == 6 * 4


def test_no_labels_no_braces_and_empty_help(backend: Backend) -> None:
    store = backend.store.Store()
    store.inc(store.series(store.counter("c_total"), ()), 2)
    h = store.series(store.histogram("h", buckets=(1,)), ())
    store.observe(h, 3)
    assert store.render() == (
        b"# HELP c_total \n# TYPE c_total counter\nc_total 2\n"
        b"# HELP h \n# TYPE h histogram\n"
        b'h_bucket{le="1"} 0\nh_bucket{le="+Inf"} 1\nh_sum 3\nh_count 1\n'
    )


def test_hostile_label_values_exact(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "h", ("v", "w"))
    for i, value in enumerate(HOSTILE):
        store.inc(store.series(m, (value, "x")), i)
    body = store.render().decode("utf-8")
    assert body.splitlines()[2:] == [
        'c_total{v="say \\"hi\\"",w="x"} 0',
        'c_total{v="C:\\\\path\\\\",w="x"} 1',
        'c_total{v="line1\\nline2",w="x"} 2',
        'c_total{v="ünïcödé ✓ 日本",w="x"} 3',
        'c_total{v="",w="x"} 4',
        'c_total{v="\\\\\\"\\n\\\\n",w="x"} 5',
    ]
    assert "ünïcödé ✓ 日本".encode() in store.render()  # raw UTF-8, not escaped


def test_help_escaping(backend: Backend) -> None:
    store = backend.store.Store()
    store.gauge("g", 'Has "quotes", a \\ backslash\nand a newline.')
    text = store.render().decode().splitlines()[0]
    om = store.render(openmetrics=True).decode().splitlines()[0]
    assert text == '# HELP g Has "quotes", a \\\\ backslash\\nand a newline.'
    assert om == '# HELP g Has \\"quotes\\", a \\\\ backslash\\nand a newline.'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (1 / 3, "0.3333333333333333"),  # 16 digits: %.15g would read back differently
        (0.1 + 0.2, "0.30000000000000004"),  # needs all 17
        (2.0**53, "9007199254740992"),
        (1e15, "1e+15"),  # %g switches to an exponent at 15 digits
        (123456.0, "123456"),
        (1e21, "1e+21"),
        (1e-7, "1e-07"),
        (-0.0, "-0"),
        (-2.5, "-2.5"),
        (5e-324, "4.94065645841247e-324"),  # subnormal: 15 digits already read back
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_float_formatting(backend: Backend, value: float, text: str) -> None:
    store = backend.store.Store()
    store.set(store.series(store.gauge("g"), ()), value)
    assert store.render().decode().splitlines()[-1] == f"g {text}"


def test_le_formatting(backend: Backend) -> None:
    store = backend.store.Store()
    h = store.histogram("h", "", (), buckets=(1e-7, 0.005, 0.5, 1, 2.5, 3600000, 1e20))
    store.series(h, ())
    les = [
        line.split('le="')[1].split('"')[0]
        for line in store.render().decode().splitlines()
        if "_bucket" in line
    ]
    assert les == ["1e-07", "0.005", "0.5", "1", "2.5", "3600000", "1e+20", "+Inf"]


def test_default_buckets_render_as_envoy_prints_them(backend: Backend) -> None:
    store = backend.store.Store()
    store.series(store.histogram("h", "", ()), ())
    les = [
        line.split('le="')[1].split('"')[0]
        for line in store.render().decode().splitlines()
        if "_bucket" in line
    ]
    assert (
        les
        == (
            "0.5 1 5 10 25 50 100 250 500 1000 2500 5000 10000 30000 60000 300000 600000 "
            "1800000 3600000 +Inf"
        ).split()
    )


def test_big_counter_is_exact_decimal(backend: Backend) -> None:
    store = backend.store.Store()
    s = store.series(store.counter("c_total"), ())
    store.inc(s, 2**64 - 1)
    assert store.render().endswith(b"\nc_total 18446744073709551615\n")


def test_openmetrics_counter_naming(backend: Backend) -> None:
    store = backend.store.Store()
    store.inc(store.series(store.counter("reqs", "No suffix."), ()))
    store.inc(store.series(store.counter("a_total_total", "Two suffixes."), ()))
    assert store.render(openmetrics=True) == (
        b"# HELP a_total Two suffixes.\n# TYPE a_total counter\na_total_total 1\n"
        b"# HELP reqs No suffix.\n# TYPE reqs counter\nreqs_total 1\n# EOF\n"
    )
    assert store.render() == (
        b"# HELP a_total_total Two suffixes.\n# TYPE a_total_total counter\na_total_total 1\n"
        b"# HELP reqs No suffix.\n# TYPE reqs counter\nreqs 1\n"
    )


def test_openmetrics_leaves_out_a_sum_that_is_not_a_counter(backend: Backend) -> None:
    store = backend.store.Store()
    pos = store.histogram("pos", "", ("k",), buckets=(1,))
    neg = store.histogram("neg", "", (), buckets=(-1, 1))
    store.observe(store.series(pos, ("fine",)), 2)
    store.observe(store.series(pos, ("negative",)), -2)
    nan = store.series(pos, ("nan",))
    store.observe(nan, math.inf)
    store.observe(nan, -math.inf)
    store.observe(store.series(neg, ()), 2)
    assert store.render(openmetrics=True) == (
        b"# HELP neg \n# TYPE neg histogram\n"
        b'neg_bucket{le="-1"} 0\nneg_bucket{le="1"} 0\nneg_bucket{le="+Inf"} 1\n'
        b"# HELP pos \n# TYPE pos histogram\n"
        b'pos_bucket{k="fine",le="1"} 0\npos_bucket{k="fine",le="+Inf"} 1\n'
        b'pos_sum{k="fine"} 2\npos_count{k="fine"} 1\n'
        b'pos_bucket{k="negative",le="1"} 1\npos_bucket{k="negative",le="+Inf"} 1\n'
        b'pos_bucket{k="nan",le="1"} 1\npos_bucket{k="nan",le="+Inf"} 2\n'
        b"# EOF\n"
    )
    openmetrics_samples(store.render(openmetrics=True))  # valid OpenMetrics
    text = store.render().decode()  # the text format keeps every _sum and _count
    assert 'pos_sum{k="negative"} -2\n' in text and 'pos_sum{k="nan"} NaN\n' in text
    assert "neg_sum 2\nneg_count 1\n" in text


def test_overflow_rendering(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "C.", ("k",), max_series=1)
    store.inc(store.series(m, ("a",)))
    store.inc(store.series(m, ("b",)), 2)
    store.inc(store.series(m, ("c",)), 3)
    store.gauge("z", "Z.")
    assert store.render() == (
        b"# HELP c_total C.\n# TYPE c_total counter\n"
        b'c_total{k="a"} 1\nc_total{k="__overflow__"} 5\n'
        b"# HELP meshstats_series_overflow_total Label sets folded into the overflow series "
        b"because the metric reached max_series.\n"
        b"# TYPE meshstats_series_overflow_total counter\n"
        b'meshstats_series_overflow_total{metric="c_total"} 2\n'
        b"# HELP z Z.\n# TYPE z gauge\n"
    )
    om = store.render(openmetrics=True).decode()
    assert "# TYPE meshstats_series_overflow counter\n" in om
    assert 'meshstats_series_overflow_total{metric="c_total"} 2\n' in om


# -- independent parsers -------------------------------------------------------------------


def hostile_store(backend: Backend) -> Any:
    """Istio's names (promtool lints one of them) plus every hostile label value."""
    store = istio_store(backend)
    hostile = store.counter("hostile_total", "Hostile values.", ("v",))
    specials = store.gauge("special_values", "NaN and infinities.", ("v",))
    for i, value in enumerate(HOSTILE):
        store.inc(store.series(hostile, (value,)), i)
    for special in (math.nan, math.inf, -math.inf):
        store.set(store.series(specials, (str(special),)), special)
    store.series(store.histogram("istio_request_bytes", "Bytes.", ("v",)), ("\x00\t\r",))
    return store


def lint_store(backend: Backend) -> Any:
    """``hostile_store`` plus a counter without ``_total`` and a metric without help."""
    store = hostile_store(backend)
    store.inc(store.series(store.counter("reqs", "No suffix."), ()))
    store.set(store.series(store.gauge("no_help"), ()), 1)
    return store


def test_promtool_accepts_text(backend: Backend) -> None:
    code, problems = promtool(lint_store(backend).render())
    # 3 = lint only; every line must be one of these known, expected lints.
    assert code == 3
    assert problems == {
        'istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"',
        'reqs counter metrics should have "_total" suffix',
        "no_help no help text",
    }


def test_promtool_clean_output_exits_zero(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("requests_total", "Requests.", ("v",))
    for value in HOSTILE:
        store.inc(store.series(m, (value,)))
    assert promtool(store.render()) == (0, set())


def test_promtool_rejects_a_broken_body() -> None:
    # The checker itself must be able to fail: an unescaped quote is a parse error (rc 1).
    code, _ = promtool(b'# TYPE a_total counter\na_total{v="x"y"} 1\n')
    assert code == 1


def test_openmetrics_parser_accepts_and_reads_back(backend: Backend) -> None:
    store = lint_store(backend)
    body = store.render(openmetrics=True).decode()
    families = {f.name: f for f in parse_openmetrics(body)}  # type: ignore[no-untyped-call]
    assert families["istio_requests"].type == "counter"
    assert families["istio_request_duration_milliseconds"].type == "histogram"
    hostile = {s.labels["v"]: s.value for s in families["hostile"].samples}
    assert hostile == {v: i for i, v in enumerate(HOSTILE)}
    assert families["special_values"].documentation == "NaN and infinities."
    assert families["hostile"].documentation == "Hostile values."


def test_openmetrics_and_text_carry_the_same_samples(backend: Backend) -> None:
    store = hostile_store(backend)
    assert same_values(text_samples(store.render()), openmetrics_samples(store.render(True)))


def test_openmetrics_parser_rejects_a_broken_histogram() -> None:
    snap = [("h", "histogram", "", (), (1.0,), [((), ((2, 1), 3.0))])]
    good = render_snapshot(snap, openmetrics=True)  # type: ignore[arg-type]
    openmetrics_samples(good)
    broken = good.replace(b'h_bucket{le="+Inf"} 3', b'h_bucket{le="+Inf"} 1')
    with pytest.raises(ValueError):
        openmetrics_samples(broken)


# -- random stores ---------------------------------------------------------------------------

label_value = st.text(st.characters(codec="utf-8"), max_size=8).filter(
    lambda v: v != "__overflow__"
)
finite_bounds = st.lists(
    st.floats(-1e6, 1e9, allow_nan=False, allow_infinity=False), min_size=1, max_size=5, unique=True
).map(lambda b: sorted({0.0 if x == 0 else x for x in b}))
help_text = st.text(st.characters(codec="utf-8"), max_size=12).map(lambda h: "h" + h)


@st.composite
def store_specs(draw: st.DrawFn) -> list[dict[str, Any]]:
    specs = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["counter", "gauge", "histogram"]))
        nlabels = draw(st.integers(0, 2))
        label_sets = draw(
            st.lists(st.tuples(*[label_value] * nlabels), min_size=0, max_size=3, unique=True)
        )
        value: st.SearchStrategy[Any]
        if kind == "counter":
            value = st.integers(0, 2**40)
        elif kind == "gauge":
            value = st.floats()  # NaN and infinities included
        else:
            value = st.floats(allow_nan=False)
        ops = draw(st.lists(st.tuples(st.integers(0, 10), value), max_size=12))
        specs.append(
            {
                "name": f"m{i}_total" if kind == "counter" else f"m{i}",
                "kind": kind,
                "help": draw(help_text),
                "labels": tuple(f"l{j}" for j in range(nlabels)),
                "buckets": draw(finite_bounds) if kind == "histogram" else (),
                "label_sets": label_sets,
                "ops": ops,
            }
        )
    return specs


def expected_samples(specs: list[dict[str, Any]], openmetrics: bool) -> dict[Any, float]:
    """The samples the recorded operations must produce, computed without the store."""
    out: dict[Any, float] = {}
    for spec in specs:
        name, names, sets = spec["name"], spec["labels"], spec["label_sets"]
        state: dict[tuple[str, ...], Any] = {}
        for values in sets:
            if spec["kind"] == "histogram":
                state[values] = ([0] * (len(spec["buckets"]) + 1), 0.0)
            else:
                state[values] = 0 if spec["kind"] == "counter" else 0.0
        for which, v in spec["ops"]:
            if not sets:
                continue
            values = sets[which % len(sets)]
            if spec["kind"] == "counter":
                state[values] += v
            elif spec["kind"] == "gauge":
                state[values] = v
            else:
                counts, total = state[values]
                counts[bisect_left(spec["buckets"], v)] += 1  # first bound >= v (le inclusive)
                state[values] = (counts, total + v)
        for values, value in state.items():
            pairs = list(zip(names, values))
            if spec["kind"] != "histogram":
                out[(name, tuple(sorted(pairs)))] = float(value)
                continue
            counts, total = value
            cumulative = 0
            les = [repr(float(b)) for b in spec["buckets"]] + ["+Inf"]
            for le, count in zip(les, counts):
                cumulative += count
                out[(name + "_bucket", tuple(sorted([*pairs, ("le", le)])))] = float(cumulative)
            if openmetrics and (spec["buckets"][0] < 0 or total < 0 or math.isnan(total)):
                continue  # OpenMetrics: no _sum/_count where the sum is not a counter
            out[(name + "_sum", tuple(sorted(pairs)))] = total
            out[(name + "_count", tuple(sorted(pairs)))] = float(cumulative)
    return out


def normalise_le(samples: dict[Any, float]) -> dict[Any, float]:
    """``le`` strings compared as numbers (``1`` and ``1.0`` are the same bound)."""
    out = {}
    for (name, labels), value in samples.items():
        fixed = tuple((k, repr(float(v)) if k == "le" and v != "+Inf" else v) for k, v in labels)
        out[(name, fixed)] = value
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=store_specs())
def test_random_stores_parse_back(backend: Backend, specs: list[dict[str, Any]]) -> None:
    store = backend.store.Store()
    for spec in specs:
        register = getattr(store, spec["kind"])
        kwargs = {"buckets": spec["buckets"]} if spec["kind"] == "histogram" else {}
        metric = register(spec["name"], spec["help"], spec["labels"], **kwargs)
        ids = [store.series(metric, values) for values in spec["label_sets"]]
        for which, v in spec["ops"]:
            if ids:
                sid = ids[which % len(ids)]
                {"counter": store.inc, "gauge": store.set, "histogram": store.observe}[
                    spec["kind"]
                ](sid, v)
    text, om = store.render(), store.render(openmetrics=True)
    assert same_values(normalise_le(text_samples(text)), expected_samples(specs, False))
    assert same_values(normalise_le(openmetrics_samples(om)), expected_samples(specs, True))
    code, problems = promtool(text)
    assert (code, problems) == (0, set())
