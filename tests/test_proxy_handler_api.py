"""The handlers use exactly what ``SidecarView`` declares.

mypy checks the types (``src`` is strict); this checks the names from the other side: every
``sidecar.<member>`` in ``http.py`` and ``tcp.py`` is in the protocol, every protocol member is
used and provided by ``Sidecar``, and the protocol's module stays a leaf.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import meshstats.proxy
from meshstats.proxy import Sidecar, SidecarConfig
from meshstats.proxy.handler_api import SidecarView

PROXY = Path(meshstats.proxy.__file__).parent
MEMBERS = {
    "config", "engine", "prefix", "mx_headers", "upstream_pool", "connect", "outbound_peer",
    "inbound_peer", "passthrough_peer",
}  # fmt: skip


def test_the_protocol_has_the_nine_members() -> None:
    declared = set(SidecarView.__annotations__) | {
        name for name, value in vars(SidecarView).items() if callable(value) and name[0] != "_"
    }
    assert declared == MEMBERS


def test_the_handlers_use_nothing_else() -> None:
    used = set()
    for name in ("http.py", "h2.py", "tcp.py"):
        used |= set(re.findall(r"\bsidecar\.(\w+)", (PROXY / name).read_text()))
    assert used == MEMBERS


def test_a_sidecar_provides_every_member() -> None:
    sidecar = Sidecar(SidecarConfig(node={"NAME": "a"}, admin_port=None))
    for name in MEMBERS:
        assert hasattr(sidecar, name), name


def test_the_protocol_module_is_a_leaf() -> None:
    tree = ast.parse((PROXY / "handler_api.py").read_text())
    runtime_imports = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.level > 0
    ]
    assert runtime_imports == []  # meshstats types only under TYPE_CHECKING
