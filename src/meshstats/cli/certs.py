"""``meshstats certs``: make a local CA and SPIFFE workload certificates for sidecars.

Examples::

    meshstats certs ca certs/ca                          # ca.crt + ca.key (keep the key)
    meshstats certs issue certs/reviews --ca certs/ca --namespace default \\
        --service-account bookinfo-reviews               # ca.crt, cert.pem, key.pem

``issue`` writes what a sidecar's ``cert_dir`` needs and prints the certificate's identity,
its URI SAN (``spiffe://cluster.local/ns/default/sa/bookinfo-reviews``), which peers see as
``source_principal``/``destination_principal``. It is :class:`meshstats.certs.LocalCA`
from the command line; no ``openssl`` is needed. Exit status: 0 written, 1 a bad name or an
unreadable CA, 2 a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import sys


def _positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of hours, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of hours > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    ca = sub.add_parser("ca", help="create a CA: DIR/ca.crt and DIR/ca.key")
    ca.add_argument("dir", metavar="DIR", help="where to write ca.crt and ca.key")
    ca.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="the host part of every SPIFFE id it issues (cluster.local, as Istio's default)",
    )
    ca.add_argument(
        "--force",
        action="store_true",
        help="replace a CA already in DIR (by default it is kept and reused)",
    )
    issue = sub.add_parser(
        "issue", help="issue a workload certificate: DIR/ca.crt, cert.pem, key.pem"
    )
    issue.add_argument("dir", metavar="DIR", help="the sidecar's cert_dir")
    issue.add_argument("--ca", required=True, metavar="CA_DIR", help="made by `certs ca`")
    issue.add_argument("--namespace", "-n", required=True, help="Kubernetes namespace")
    issue.add_argument(
        "--service-account", "-s", required=True, help="the workload's service account"
    )
    issue.add_argument(
        "--hours",
        type=_positive_hours,
        default=24.0,
        help="validity (24, as Istio's workload certificates; capped by the CA's own)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..certs import CA_CERT_FILE, CA_KEY_FILE, LocalCA
    from ..errors import ConfigError

    try:
        if args.certs_command == "ca":
            target = Path(args.dir)
            if (target / CA_KEY_FILE).exists() and not args.force:
                # Kept, not replaced: certificates it issued would stop verifying. So a
                # setup script (the README's) can run twice.
                ca = LocalCA.load(target)
                print(f"CA for {ca.trust_domain} already in {target}: kept (--force replaces it)")
                return 0
            ca = LocalCA.create(args.trust_domain)
            ca.write(target)
            print(f"CA for {ca.trust_domain}: {target / CA_CERT_FILE}, {target / CA_KEY_FILE}")
            return 0
        ca = LocalCA.load(args.ca)
        cert = ca.issue(
            args.namespace,
            args.service_account,
            validity=datetime.timedelta(hours=args.hours),
        )
        path = cert.write(args.dir)
        print(f"{cert.principal}: {path}/ (ca.crt, cert.pem, key.pem)")
        return 0
    except (ConfigError, OSError, ValueError) as exc:
        print(f"meshstats certs: {exc}", file=sys.stderr)
        return 1
