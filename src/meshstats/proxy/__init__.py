"""An asyncio sidecar proxy that produces Istio's telemetry for the traffic it carries.

>>> from meshstats.proxy import Sidecar, SidecarConfig, OutboundConfig, InboundConfig
>>> config = SidecarConfig(
...     node={"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default"},
...     cert_dir=None,                       # a directory written by meshstats.certs
...     inbound=InboundConfig(port=0, app=("127.0.0.1", 9080), protocol="http"),
...     outbound=(OutboundConfig(port=0, upstream=("127.0.0.1", 15006),
...                              service_host="ratings.default.svc.cluster.local",
...                              protocol="http"),),
... )

``async with Sidecar(config) as sidecar:`` runs it on the current event loop. See
``docs/proxy.md`` for what happens on the wire and which metrics are recorded.

Modules, one concern each: :mod:`.config` (what to listen on), :mod:`.listener` (accepting,
mTLS or plaintext), :mod:`.tcp` (prefix exchange and relay), :mod:`.http` (the HTTP/1.1 relay
and header exchange) on :mod:`.h1` (its codec) and :mod:`.interrupt` (its waits), :mod:`.h2`
(HTTP/2 and gRPC with h2, and which codec a connection speaks), :mod:`.pool` (upstream
connections kept or shared), :mod:`.sidecar` (wiring them to a stats engine and an admin
port).
"""

from __future__ import annotations

from .config import InboundConfig, OutboundConfig, SidecarConfig
from .sidecar import Sidecar

__all__ = ["InboundConfig", "OutboundConfig", "Sidecar", "SidecarConfig"]
