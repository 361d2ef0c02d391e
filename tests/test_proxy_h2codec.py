"""The sidecar's HTTP/2 codec against the ``h2`` library, configured as the relay had it.

:mod:`meshstats.proxy.h2codec` replaces h2's ``H2Connection`` in the relay, which is a
security boundary: for the same input both must hand on the same events (class and
attributes, headers included), refuse the same input with the same exception and error
code, and answer with the same frames (compared after decoding: HPACK bytes differ, as
h2 Huffman-codes and the codec does not). Input comes from a real h2 peer running
generated scripts (requests or responses, bodies split across frames, trailers, resets,
window updates, settings changes, pings, GOAWAY), cut anywhere, and then the same bytes
mutated and spliced with hostile frames. One deliberate difference: an oversized frame is
refused on its header, not once h2 would have buffered all of it (see ``_Duo.oversized``).

Every test here runs with each backend's connection (``backend.h2_conn``: the compiled
``_h2_conn_c`` and its pure twin ``_h2_conn_py``), each held to h2: so the two agree.
``MESHSTATS_H2CODEC_EXAMPLES`` raises the example counts for a long run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from conftest import Backend
from h2_reference import h2_connection
from hyperframe.frame import Frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats.proxy.h2 import CONNECTION_WINDOW, STREAM_WINDOW

_EXAMPLES = int(os.environ.get("MESHSTATS_H2CODEC_EXAMPLES", "300"))
_SETTINGS = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Subject = Any  # h2's H2Connection or the codec's Connection: the same API
_FRAME_SIZE_ERROR = 6
_OVERSIZED = ("raised", ("FrameTooLargeError", _FRAME_SIZE_ERROR))


_CODEC: dict[str, Any] = {}  # "Connection": the backend's class under test


@pytest.fixture(scope="module", autouse=True)
def codec(backend: Backend) -> Iterator[None]:
    """The module's tests run ``backend``'s connection: the compiled one or the pure twin."""
    _CODEC["Connection"] = backend.h2_conn.Connection
    try:
        yield
    finally:
        _CODEC.clear()


def _pair(client: bool) -> tuple[Subject, Subject]:
    """h2 as the relay configured it, and the codec, each started as H2Conn starts one."""
    pair: tuple[Subject, Subject] = (h2_connection(client), _CODEC["Connection"](client=client))
    for conn in pair:
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
    return pair


# -- describing what each side does, so that it can be compared ---------------------------------


def _header(field: tuple[bytes, bytes]) -> tuple[bool, bytes, bytes]:
    return isinstance(field, hpack.NeverIndexedHeaderTuple), field[0], field[1]


def _value(value: object) -> object:
    if isinstance(value, h2.events.Event):
        return _event(value)
    if isinstance(value, h2.settings.ChangedSetting):
        return (int(value.setting), value.original_value, value.new_value)
    if isinstance(value, dict):
        return sorted((int(k), _value(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_header(v) if isinstance(v, tuple) else _value(v) for v in value]
    if isinstance(value, Frame):
        return (getattr(value, "type", None), value.stream_id, getattr(value, "body", b""))
    return value


def _event(event: h2.events.Event) -> tuple[str, list[tuple[str, object]]]:
    return type(event).__name__, sorted((k, _value(v)) for k, v in vars(event).items())


def _outcome(action: Callable[[], object]) -> tuple[str, object]:
    """What an action returned (events described), or what it raised."""
    try:
        result = action()
    except (h2.exceptions.H2Error, ValueError, KeyError) as error:
        return "raised", (type(error).__name__, int(getattr(error, "error_code", -1) or 0))
    if isinstance(result, list):
        return "returned", [_event(event) for event in result]
    return "returned", result


class _Frames:
    """Decodes one side's output into frames compared by meaning: a header block whole
    and HPACK-decoded (whatever CONTINUATION split it), SETTINGS as a sorted dict."""

    def __init__(self) -> None:
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.decoder.max_allowed_table_size = 1 << 32
        self.buffer = b""
        self.block: list[object] | None = None

    def feed(self, data: bytes) -> list[object]:
        if self.buffer == b"" and data.startswith(_PREFACE):
            data = data[len(_PREFACE) :]
        self.buffer += data
        frames: list[object] = []
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind, flags = self.buffer[3], self.buffer[4]
            stream_id = int.from_bytes(self.buffer[5:9], "big")
            body = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            frames.extend(self._frame(kind, flags, stream_id, body))
        return frames

    def _frame(self, kind: int, flags: int, stream_id: int, body: bytes) -> list[object]:
        if kind == 0x4 and not flags & 1:
            pairs = sorted(
                (int.from_bytes(body[i : i + 2], "big"), int.from_bytes(body[i + 2 : i + 6], "big"))
                for i in range(0, len(body), 6)
            )
            return [("SETTINGS", pairs)]
        if kind == 0x1:
            self.block = [stream_id, flags & 0x1, body]
        elif kind == 0x9 and self.block is not None:
            self.block[2] = self.block[2] + body  # type: ignore[operator]
        else:
            return [(kind, flags, stream_id, body)]
        if not flags & 0x4:
            return []
        sid, end, block = self.block
        self.block = None
        try:
            decoded = self.decoder.decode(block, raw=True)  # type: ignore[arg-type]
        except hpack.HPACKError:
            # Both h2 and the codec encode a block before refusing to send it (trailers
            # without END_STREAM): the peer's table then misses it, on both sides alike.
            return [("HEADERS", sid, end, "undecodable")]
        return [("HEADERS", sid, end, [_header(f) for f in decoded])]


class _Duo:
    """h2 and the codec in the same role, given the same calls; each step's outcomes and
    output must agree."""

    def __init__(self, client: bool) -> None:
        self.ours_is_h2, self.ours = _pair(client)
        self.frames = (_Frames(), _Frames())
        self.streams: set[int] = set()
        self.unacked: dict[int, int] = {}
        self.dead = False
        self.opening = self.check_output()  # the preface and SETTINGS, for the peer

    def both(self, name: str, *args: Any, **kwargs: Any) -> tuple[str, object]:
        theirs = _outcome(lambda: getattr(self.ours_is_h2, name)(*args, **kwargs))
        ours = _outcome(lambda: getattr(self.ours, name)(*args, **kwargs))
        assert ours == theirs, (name, args)
        return ours

    def check_output(self) -> bytes:
        theirs = self.ours_is_h2.data_to_send()
        ours = self.ours.data_to_send()
        assert self.frames[1].feed(ours) == self.frames[0].feed(theirs)
        return bytes(theirs)

    def receive(self, data: bytes, cuts: list[int]) -> None:
        """Feed ``data`` cut at ``cuts``; compare every call's events."""
        start = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
            piece = data[start:cut]
            start = cut
            if not piece:
                continue
            theirs = _outcome(lambda: self.ours_is_h2.receive_data(piece))  # noqa: B023
            outcome = _outcome(lambda: self.ours.receive_data(piece))  # noqa: B023
            if outcome == _OVERSIZED and theirs[0] == "returned":
                self.oversized(data[cut:])
                return
            assert outcome == theirs, ("receive_data", piece)
            if outcome[0] == "raised":
                self.dead = True
                return
            events: list[tuple[str, list[tuple[str, object]]]] = outcome[1]  # type: ignore[assignment]
            for event in events:
                self.note(event)
            self.check_state()

    def oversized(self, rest: bytes) -> None:
        """The one deliberate difference: a frame that announces more than our
        SETTINGS_MAX_FRAME_SIZE (16,384) is refused on its 9-byte header, where h2 buffers
        it (up to 16 MiB) and refuses it once all of it has arrived. h2 must refuse it too
        when the rest of the input completes it, with the same error and GOAWAY; when the
        input ends first, h2 is still waiting and the codec has sent that GOAWAY."""
        later = _outcome(lambda: self.ours_is_h2.receive_data(rest)) if rest else None
        ours = self.frames[1].feed(self.ours.data_to_send())
        theirs = self.frames[0].feed(self.ours_is_h2.data_to_send())
        if later is not None and later[0] == "raised":
            assert later == _OVERSIZED
            assert ours == theirs
        else:
            goaway = ours[-1]
            assert isinstance(goaway, tuple) and goaway[0] == 0x7  # GOAWAY
            assert int.from_bytes(goaway[3][4:8], "big") == _FRAME_SIZE_ERROR
        self.dead = True

    def note(self, event: tuple[str, list[tuple[str, object]]]) -> None:
        name, attrs = event
        values = dict(attrs)
        if "stream_id" in values and values["stream_id"]:
            self.streams.add(int(values["stream_id"]))  # type: ignore[call-overload]
        if name == "DataReceived":
            stream_id = int(values["stream_id"])  # type: ignore[call-overload]
            length = int(values["flow_controlled_length"])  # type: ignore[call-overload]
            self.unacked[stream_id] = self.unacked.get(stream_id, 0) + length

    def check_state(self) -> None:
        for stream_id in sorted(self.streams):
            self.both("local_flow_control_window", stream_id)
        assert self.ours.max_outbound_frame_size == self.ours_is_h2.max_outbound_frame_size
        assert (
            self.ours.remote_settings.max_concurrent_streams
            == self.ours_is_h2.remote_settings.max_concurrent_streams
        )


# -- scripts: a real h2 peer and the pair under test, turn by turn ------------------------------

_NAMES = st.sampled_from(
    [b"x-a", b"x-b", b"cookie", b"authorization", b"content-type", b"te", b"content-length"]
)
_VALUES = st.sampled_from([b"1", b"v", b"a" * 40, b"trailers", b"application/grpc", b"", b"100"])
_FIELDS = st.lists(st.tuples(_NAMES, _VALUES), max_size=4)
_SIZES = st.sampled_from([0, 1, 5, 100, 4096, 16_384, 16_385, 40_000, 70_000])


def _request(
    fields: list[tuple[bytes, bytes]], method: bytes = b"POST"
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":path", b"/p"),
        (b":authority", b"svc"),
        *fields,
    ]


def _response(
    fields: list[tuple[bytes, bytes]], status: bytes = b"200"
) -> list[tuple[bytes, bytes]]:
    return [(b":status", status), *fields]


_OPEN = st.tuples(
    st.just("open"), _FIELDS, st.booleans(), st.sampled_from([b"POST", b"GET", b"HEAD"])
)
_RESPOND = st.tuples(
    st.just("respond"), _FIELDS, st.booleans(), st.sampled_from([b"200", b"100", b"204"])
)
_BODY = st.tuples(st.just("body"), _SIZES, st.booleans(), st.booleans())
_ACK = st.tuples(st.just("ack"), st.integers(0, 70_000), st.booleans(), st.booleans())
_SETTING_CHANGES = st.dictionaries(
    st.sampled_from([0x1, 0x3, 0x4, 0x5, 0x6, 0x99]),
    st.sampled_from([0, 1, 100, 16_384, 70_000, 2**31 - 1]),
    max_size=3,
)
# The common steps more often than the rare ones (hypothesis picks a branch uniformly).
_STEP = st.one_of(
    _OPEN, _OPEN, _OPEN, _RESPOND, _RESPOND, _BODY, _BODY, _BODY, _BODY, _ACK, _ACK, _ACK,
    # (h2 cannot send an empty block: IndexError; the codec sends it)
    st.tuples(st.just("trailers"), _FIELDS.filter(bool), st.booleans(), st.booleans()),
    st.tuples(st.just("reset"), st.sampled_from([0, 2, 8]), st.booleans(), st.booleans()),
    st.tuples(
        st.just("window"),
        st.sampled_from([1, 1000, 65_535, 2**31 - 1]),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("settings"), _SETTING_CHANGES, st.booleans(), st.booleans()),
    st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8), st.booleans(), st.booleans()),
    st.tuples(st.just("goaway"), st.sampled_from([0, 2]), st.booleans(), st.booleans()),
)  # fmt: skip


def _peer(client: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client, header_encoding=None)
    )
    peer.initiate_connection()
    return peer


def _pick(streams: list[int], which: bool) -> int | None:
    if not streams:
        return None
    return streams[-1] if which else streams[0]


def _play_peer(peer: h2.connection.H2Connection, step: tuple[Any, ...], streams: list[int]) -> None:
    """One step on the peer's side; what h2 itself refuses to send is skipped."""
    kind, arg, flag, which = step
    sid = _pick(streams, which)
    try:
        if kind == "open" and peer.config.client_side:
            sid = peer.get_next_available_stream_id()
            peer.send_headers(sid, _request(arg, which), end_stream=flag)
            streams.append(sid)
        elif kind == "respond" and not peer.config.client_side and sid is not None:
            peer.send_headers(sid, _response(arg, which), end_stream=flag and which != b"100")
        elif kind == "body" and sid is not None:
            _send_body(peer, sid, arg, flag)
        elif kind == "trailers" and sid is not None:
            peer.send_headers(sid, arg, end_stream=True)
        elif kind == "reset" and sid is not None:
            peer.reset_stream(sid, arg)
        elif kind == "window":
            peer.increment_flow_control_window(arg, sid if flag else None)
        elif kind == "settings":
            peer.update_settings(arg)
        elif kind == "ping":
            peer.ping(arg)
        elif kind == "goaway" and flag and which:  # rare: it ends the script
            peer.close_connection(arg)
    except (h2.exceptions.H2Error, ValueError, KeyError):
        pass


def _send_body(conn: Any, sid: int, size: int, end: bool) -> None:
    left = size
    while left > 0:
        chunk = min(left, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        if chunk <= 0:
            return
        conn.send_data(sid, b"d" * chunk, end_stream=end and chunk == left)
        left -= chunk
    if end and size == 0:
        conn.end_stream(sid)


def _play_subject(duo: _Duo, step: tuple[Any, ...], streams: list[int]) -> None:
    """One step on the side under test, the same call to h2 and to the codec."""
    kind, arg, flag, which = step
    sid = _pick(streams, which)
    client = duo.ours.client
    if kind == "open" and client:
        outcome = duo.both("get_next_available_stream_id")
        sid = int(outcome[1])  # type: ignore[call-overload]
        if duo.both("send_headers", sid, _request(arg, which), end_stream=flag)[0] == "returned":
            streams.append(sid)
            duo.streams.add(sid)
    elif kind == "respond" and not client and sid is not None:
        duo.both("send_headers", sid, _response(arg, which), end_stream=flag and which != b"100")
    elif kind == "body" and sid is not None:
        window = duo.both("local_flow_control_window", sid)
        if window[0] == "returned":
            size = min(arg, int(window[1]), duo.ours.max_outbound_frame_size)  # type: ignore[call-overload]
            duo.both("send_data", sid, b"d" * size, end_stream=flag)
    elif kind == "trailers" and sid is not None:
        duo.both("send_headers", sid, arg, end_stream=flag)
    elif kind == "reset" and sid is not None:
        duo.both("reset_stream", sid, arg)
    elif kind == "window":
        duo.both("increment_flow_control_window", arg, None)
    elif kind == "ack" and sid is not None:
        size = min(arg, duo.unacked.get(sid, 0))
        duo.unacked[sid] = duo.unacked.get(sid, 0) - size
        duo.both("acknowledge_received_data", size, sid)
    elif kind == "goaway" and not flag and which:
        duo.both("close_connection")
    elif kind == "settings" and sid is not None:  # (settings are the peer's to change)
        duo.both("end_stream", sid)


@st.composite
def _scripts(draw: st.DrawFn) -> tuple[bool, list[tuple[bool, tuple[Any, ...], list[int]]]]:
    """A client or server under test, and turns: an exchange or two (so that most
    scripts carry bodies both ways), then anything, in any order."""
    client = draw(st.booleans())
    cuts = st.lists(st.integers(0, 200_000), max_size=4)
    exchange = st.tuples(
        st.tuples(st.just(True), _OPEN, cuts),
        st.tuples(st.booleans(), _BODY, cuts),
        st.tuples(st.just(False), _ACK, cuts),
        st.tuples(st.just(False), _RESPOND, cuts),
        st.tuples(st.booleans(), _BODY, cuts),
        st.tuples(st.just(False), _ACK, cuts),
    )
    turns = [turn for turns in draw(st.lists(exchange, min_size=1, max_size=2)) for turn in turns]
    turns += draw(st.lists(st.tuples(st.booleans(), _STEP, cuts), max_size=20))
    return client, turns


def _run(client: bool, turns: list[tuple[bool, tuple[Any, ...], list[int]]]) -> bytes:
    """Play a script; returns every byte the peer sent (for the mutation tests)."""
    duo = _Duo(client)
    peer = _peer(not client)
    streams: list[int] = []
    sent = b""

    def to_subject(cuts: list[int]) -> None:
        nonlocal sent
        data = peer.data_to_send()
        sent += data
        duo.receive(data, cuts)

    peer.receive_data(duo.opening)
    to_subject([])
    for by_peer, step, cuts in turns:
        if duo.dead:
            break
        kind = step[0]
        if kind in ("open", "respond"):  # whichever side's turn it is
            by_peer = (kind == "open") != client
        elif kind == "ack":
            by_peer = False
        if by_peer:
            _play_peer(peer, step, streams)
            to_subject(cuts)
        else:
            _play_subject(duo, step, streams)
        if duo.dead:
            break
        answer = duo.check_output()
        try:
            peer.receive_data(answer)
        except h2.exceptions.H2Error:
            break
        to_subject(cuts)
    duo.check_output()
    return sent


@_SETTINGS
@given(_scripts())
def test_a_real_peer_gets_the_same_answers(
    script: tuple[bool, list[tuple[bool, tuple[Any, ...], list[int]]]],
) -> None:
    _run(*script)


# -- the same bytes, mutated, and hostile frames ------------------------------------------------


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes((kind, flags))
    return header + stream_id.to_bytes(4, "big") + payload


_BLOCK = hpack.Encoder().encode(_request([]))
_PAYLOADS = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [
            _BLOCK,
            b"\x00\x00\x00\x00",
            b"\x7f\xff\xff\xff",
            b"\x80\x00\x00\x01",
            b"\x00\x00\x00\x01" + b"\x10",
            b"\x05" + b"x" * 3,
            b"\x02" + b"x" * 2,
            b"\x00\x04\x00\x01\x00\x00",
            b"\x00\x03\x00\x00\x00\x00",
            b"\x00\x05\x01\x00\x00\x00",
            b"\x00\x02\x00\x00\x00\x01",
            b"x" * 16_385,
        ]
    ),
)
_HOSTILE = st.builds(
    _frame,
    st.integers(0, 11),
    st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x24, 0x2D, 0xFF]),
    st.sampled_from([0, 1, 2, 3, 5, 7, 0x8000_0001, 99]),
    _PAYLOADS,
)
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 8)),
    st.tuples(st.just("frame"), st.integers(0, 1 << 20), _HOSTILE),
)


def _mutate(data: bytes, mutation: tuple[str, int, Any], keep: int) -> bytes:
    kind, at, what = mutation
    at = keep + at % (len(data) - keep + 1)  # the preface is left alone: h2 refuses it bare
    if kind == "flip" and at < len(data):
        return data[:at] + bytes((data[at] ^ what,)) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + bytes(what) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + what :]
    if kind == "frame":
        # Between two frames, where it is a frame rather than noise inside one.
        boundaries = _boundaries(data, keep)
        at = boundaries[at % len(boundaries)]
        return data[:at] + bytes(what) + data[at:]
    return data


def _boundaries(data: bytes, start: int) -> list[int]:
    found = [start]
    at = start
    while at + 9 <= len(data):
        at += 9 + int.from_bytes(data[at : at + 3], "big")
        if at <= len(data):
            found.append(at)
    return found


@_SETTINGS
@given(
    _scripts(),
    st.lists(_MUTATION, min_size=1, max_size=3),
    st.lists(st.integers(0, 200_000), max_size=5),
)
def test_mutated_input_is_refused_or_taken_alike(
    script: tuple[bool, list[tuple[bool, tuple[Any, ...], list[int]]]],
    mutations: list[tuple[str, int, Any]],
    cuts: list[int],
) -> None:
    client, turns = script
    data = _run(client, turns)
    keep = 0 if client else len(_PREFACE)
    for mutation in mutations:
        data = _mutate(data, mutation, keep)
    duo = _Duo(client)
    duo.receive(data, cuts)
    duo.check_output()
    for stream_id, size in sorted(duo.unacked.items()):
        if duo.dead:
            break
        duo.both("acknowledge_received_data", size, stream_id)
        duo.check_output()


@_SETTINGS
@given(
    st.booleans(),
    st.lists(_HOSTILE, min_size=1, max_size=6),
    st.lists(st.integers(0, 70_000), max_size=4),
)
def test_hostile_frames_are_refused_alike(
    client: bool, frames: list[bytes], cuts: list[int]
) -> None:
    duo = _Duo(client)
    preface = b"" if client else _PREFACE
    opening = _frame(0x4, 0, 0, b"")
    request = _frame(0x1, 0x4, 1, _BLOCK) if not client else b""
    duo.receive(preface + opening + request + b"".join(frames), cuts)
    duo.check_output()


@pytest.mark.parametrize("client", [False, True])
@pytest.mark.parametrize("arrived", [0, 100, 16_384, 16_385])
def test_an_oversized_frame_is_refused_on_its_header(client: bool, arrived: int) -> None:
    """A peer announcing a DATA frame over our SETTINGS_MAX_FRAME_SIZE gets GOAWAY
    FRAME_SIZE_ERROR as soon as the frame's header is in: nothing of it is buffered (h2
    waits for all of it first, and refuses it then: ``_Duo.oversized`` checks both)."""
    duo = _Duo(client)
    start = (b"" if client else _PREFACE) + _frame(0x4, 0, 0, b"")
    start += b"" if client else _frame(0x1, 0x4, 1, _BLOCK)
    header = (16_385).to_bytes(3, "big") + bytes((0x0, 0)) + (1).to_bytes(4, "big")
    duo.receive(start + header + b"x" * arrived, [len(start) + len(header)])
    assert duo.dead
    assert len(duo.ours._input) <= len(header)  # what is buffered: the header at most


@pytest.mark.parametrize("client", [False, True])
def test_a_bad_preface_is_refused_without_goaway(client: bool) -> None:
    duo = _Duo(client)
    duo.receive(b"GET / HTTP/1.1\r\n\r\n", [])
    duo.check_output()


@pytest.mark.parametrize("client", [False, True])
def test_one_stream_past_the_limit_is_refused_alike(client: bool) -> None:
    """A peer opening more streams than our SETTINGS_MAX_CONCURRENT_STREAMS (100)."""
    duo = _Duo(client)
    peer = _peer(not client)
    peer.receive_data(duo.opening)
    duo.receive(peer.data_to_send(), [])
    encoder = hpack.Encoder()
    first = 2 if client else 1  # the peer's own stream ids: a request or a push, alike
    frames = [
        _frame(0x1, 0x4, stream_id, encoder.encode(_request([])))
        for stream_id in range(first, first + 2 * 101, 2)
    ]
    duo.receive(b"".join(frames), [9 * 50])
    duo.check_output()
    assert duo.dead


@pytest.mark.parametrize("client", [False, True])
def test_data_past_the_window_and_a_shrunk_window_alike(client: bool) -> None:
    """DATA beyond the stream window, after SETTINGS_INITIAL_WINDOW_SIZE moved it: both
    refuse it the same way; and a window change reaches an open stream alike."""
    duo = _Duo(client)
    preface = b"" if client else _PREFACE
    opening = _frame(0x4, 0, 0, (0x4).to_bytes(2, "big") + (1000).to_bytes(4, "big"))
    stream_id = 2 if client else 1
    request = _frame(0x1, 0x4, stream_id, _BLOCK)
    data = _frame(0x0, 0, stream_id, b"x" * 16_000) * 5
    duo.receive(preface + opening + request, [])
    duo.check_output()
    duo.receive(data, [100, 20_000])
    duo.check_output()
    assert duo.dead
