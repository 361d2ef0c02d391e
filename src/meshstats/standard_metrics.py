"""Istio's standard metrics: names, types, help text and label order, as data.

The label order is today's Istio (istio/proxy ``istio_stats``, 25 labels for HTTP/gRPC,
23 for TCP, 20 for gRPC message counters), see ``shared/reference/telemetry-v2.md`` §4.2.

>>> from meshstats.standard_metrics import HTTP_LABELS, TCP_LABELS, STANDARD_METRICS
>>> len(HTTP_LABELS), len(TCP_LABELS)
(25, 23)
>>> STANDARD_METRICS["requests_total"].name
'istio_requests_total'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PEER_LABELS",
    "HTTP_LABELS",
    "TCP_LABELS",
    "GRPC_MESSAGE_LABELS",
    "StandardMetric",
    "STANDARD_METRICS",
    "BUILD_METRIC",
]

#: Labels 1-20: who talked to whom. Every standard metric starts with these.
PEER_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
)

HTTP_LABELS: tuple[str, ...] = PEER_LABELS + (
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)

TCP_LABELS: tuple[str, ...] = PEER_LABELS + (
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)

GRPC_MESSAGE_LABELS: tuple[str, ...] = PEER_LABELS

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class StandardMetric:
    short_name: str  # as Istio's stats config names it: "requests_total"
    kind: Kind
    labels: tuple[str, ...]
    help: str

    @property
    def name(self) -> str:
        return f"istio_{self.short_name}"


def _m(short: str, kind: Kind, labels: tuple[str, ...], help_text: str) -> StandardMetric:
    return StandardMetric(short, kind, labels, help_text)


#: Keyed by the short name used in Istio's stats PluginConfig ``metrics[].name``.
STANDARD_METRICS: dict[str, StandardMetric] = {
    m.short_name: m
    for m in (
        _m("requests_total", "counter", HTTP_LABELS, "Total requests handled by the proxy."),
        _m(
            "request_duration_milliseconds",
            "histogram",
            HTTP_LABELS,
            "Time from the first request byte to the last response byte, in milliseconds.",
        ),
        _m("request_bytes", "histogram", HTTP_LABELS, "Request size on the wire, in bytes."),
        _m("response_bytes", "histogram", HTTP_LABELS, "Response size on the wire, in bytes."),
        _m(
            "request_messages_total",
            "counter",
            GRPC_MESSAGE_LABELS,
            "gRPC messages sent by the client.",
        ),
        _m(
            "response_messages_total",
            "counter",
            GRPC_MESSAGE_LABELS,
            "gRPC messages sent by the server.",
        ),
        _m(
            "tcp_connections_opened_total",
            "counter",
            TCP_LABELS,
            "TCP connections opened.",
        ),
        _m(
            "tcp_connections_closed_total",
            "counter",
            TCP_LABELS,
            "TCP connections closed.",
        ),
        _m("tcp_sent_bytes_total", "counter", TCP_LABELS, "Bytes sent to the peer over TCP."),
        _m(
            "tcp_received_bytes_total",
            "counter",
            TCP_LABELS,
            "Bytes received from the peer over TCP.",
        ),
    )
}

#: ``istio_build{component="proxy", tag="<ISTIO_VERSION>"} 1``
BUILD_METRIC = StandardMetric("build", "gauge", ("component", "tag"), "Istio component build info.")
