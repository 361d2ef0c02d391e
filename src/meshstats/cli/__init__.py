"""The ``meshstats`` command.

Each subcommand lives in its own module of this package with two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). Every module is
imported to build the parser, so each keeps its heavy imports inside ``run``.

>>> from meshstats.cli import main
>>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand name -> (module in this package, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run a small mesh on loopback, send traffic, print its telemetry"),
    "decode": ("decode", "decode a peer-exchange prefix or header value to JSON"),
    "sidecar": ("sidecar", "run one sidecar proxy from a config file"),
    "certs": ("certs", "create a local CA and SPIFFE workload certificates for sidecars"),
    "serve": ("serve", "serve the metrics of a shared store that worker processes record into"),
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="meshstats",
        description="Istio Telemetry V2 (peer metadata exchange + stats) for Python.",
    )
    parser.add_argument("--version", action="version", version=f"meshstats {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    status: int = args._run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
