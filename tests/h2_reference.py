"""The ``h2`` library's state machine as the relay used it before its own codec
(:mod:`meshstats.proxy.h2codec`): the reference ``test_proxy_h2codec.py`` holds the codec
to. Test support only; the relay never runs it.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame  # h2's own dependency: its frames

from meshstats.proxy import h2_hpack, h2_rules
from meshstats.proxy.h2 import MAX_STREAMS, _quiet_hpack

_KINDS: dict[type[h2.events.Event], int] = {
    h2.events.RequestReceived: h2_rules.REQUEST,
    h2.events.ResponseReceived: h2_rules.RESPONSE,
    h2.events.InformationalResponseReceived: h2_rules.RESPONSE,
    h2.events.TrailersReceived: h2_rules.TRAILERS,
}


class _CheckedConnection(h2.connection.H2Connection):
    """h2's connection with its inbound header checks done by
    :func:`meshstats.proxy.h2_rules.checked` (held to h2's own by ``test_proxy_h2_rules``),
    in one pass instead of h2's chain of generators, at the same point: inside
    :meth:`receive_data`, as the HEADERS frame is processed, so a refused block is the
    same connection error (GOAWAY with PROTOCOL_ERROR, nothing after it processed).
    (PUSH_PROMISE, whose block h2 would check too, is refused before: a client sidecar
    turns push off and a server never takes one.)"""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        # The same decoder, faster for indexed fields (see .h2_hpack), with h2's limits.
        decoder = h2_hpack.Decoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder
        self.encoder = h2_hpack.Encoder()  # h2 sets nothing on its own before SETTINGS

    def _receive_headers_frame(
        self, frame: hyperframe.frame.HeadersFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        frames, events = super()._receive_headers_frame(frame)
        for event in events:
            kind = _KINDS.get(type(event))
            if kind is not None:
                event.headers = h2_rules.checked(event.headers, kind)  # type: ignore[attr-defined]
                break  # one header block per frame; the rest are its END_STREAM, PRIORITY
        return frames, events


def h2_connection(client: bool) -> h2.connection.H2Connection:
    """h2's state machine, client or server side, with the relay's settings."""
    _quiet_hpack()
    config = h2.config.H2Configuration(
        client_side=client,
        header_encoding=None,
        # What a sidecar sends is what was checked as it arrived on the other connection,
        # or its own headers: checking it again on the way out cost each stream's headers
        # four more passes for nothing.
        validate_outbound_headers=False,
        # The other connection's inbound checks already refused what h2's outbound
        # normalisation would fix (upper case, surrounding whitespace, connection
        # headers): only its never-indexed marking is left to do, in _secure().
        normalize_outbound_headers=False,
        # Done by _CheckedConnection, in one pass.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = _CheckedConnection(config)
    settings: dict[h2.settings.SettingCodes, int] = {
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
    }
    if client:
        settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    conn.local_settings = h2.settings.Settings(client=client, initial_values=settings)
    return conn
