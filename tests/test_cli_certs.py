"""``meshstats certs`` and the errors a first sidecar run meets, in process.

The certificates ``meshstats certs`` writes are what a sidecar's ``cert_dir`` needs (its
identity is the SPIFFE URI SAN); a missing certificate names the ``cert_dir`` field and the
command that writes it; a port already taken names the address and the config field.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from meshstats import StatsConfig
from meshstats.certs import LocalCA, principal_of, server_context
from meshstats.cli import main
from meshstats.proxy import SidecarConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_ca_then_issue_makes_a_working_cert_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "ca", str(tmp_path / "ca"), "--trust-domain", "example.org"]) == 0
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0  # the key is private
    status = main(
        ["certs", "issue", str(tmp_path / "reviews"), "--ca", str(tmp_path / "ca"),
         "-n", "shop", "-s", "reviews", "--hours", "2"]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "spiffe://example.org/ns/shop/sa/reviews" in out
    assert principal_of(tmp_path / "reviews") == "spiffe://example.org/ns/shop/sa/reviews"
    assert server_context(tmp_path / "reviews").verify_mode.name == "CERT_REQUIRED"
    assert stat.S_IMODE((tmp_path / "reviews" / "key.pem").stat().st_mode) == 0o600


def test_an_existing_ca_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    assert main(["certs", "ca", str(ca)]) == 0
    first = (ca / "ca.crt").read_bytes()
    assert main(["certs", "ca", str(ca)]) == 0  # the README's setup can run twice
    assert (ca / "ca.crt").read_bytes() == first
    assert "kept" in capsys.readouterr().out
    assert main(["certs", "ca", str(ca), "--force"]) == 0
    assert (ca / "ca.crt").read_bytes() != first
    assert LocalCA.load(ca).trust_domain == "cluster.local"


def test_certs_errors_name_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["certs", "issue", str(tmp_path / "x"), "--ca", str(missing), "-n", "a",
                 "-s", "b"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"meshstats certs: ca_dir: cannot read {missing / 'ca.crt'}")
    assert f"`meshstats certs ca {missing}` writes it" in err
    assert main(["certs", "ca", str(tmp_path / "ca")]) == 0
    assert main(["certs", "issue", str(tmp_path / "x"), "--ca", str(tmp_path / "ca"),
                 "-n", "Shop", "-s", "b"]) == 1  # fmt: skip
    assert "namespace: must be a lower-case Kubernetes name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["certs", "issue", str(tmp_path / "x"), "--ca", "c", "-n", "a", "-s", "b",
              "--hours", "0"])  # fmt: skip
    assert usage.value.code == 2
    assert "argument --hours: must be a number of hours > 0" in capsys.readouterr().err


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def test_a_missing_certificate_names_cert_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "certs").mkdir()
    path = _config(tmp_path, "node: {NAME: a}\ncert_dir: certs\nadmin_port: null\n")
    assert main(["sidecar", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    cert = tmp_path / "certs" / "cert.pem"
    assert err == (
        f"meshstats sidecar: cert_dir: cannot read {cert}: No such file or directory "
        f"(`meshstats certs issue {tmp_path / 'certs'} --ca CA_DIR ...` writes it)"
    )


@pytest.mark.parametrize("field", ["inbound.port", "outbound[0].port", "admin_port"])
def test_a_taken_port_names_the_address_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = {
            "inbound.port": f"inbound: {{port: {port}, app: 9}}\nadmin_port: null\n",
            "outbound[0].port": (
                f"outbound: [{{port: {port}, upstream: 9, service_host: a.b.svc}}]\n"
                "admin_port: null\n"
            ),
            "admin_port": f"admin_port: {port}\n",
        }
        path = _config(tmp_path, "node: {NAME: a}\n" + listeners[field])
        assert main(["sidecar", "--config", str(path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"meshstats sidecar: cannot listen on 127.0.0.1:{port} ({field}): "
        + os.strerror(errno.EADDRINUSE)
    )


def test_the_example_configs_parse() -> None:
    for name in ("reviews-sidecar.yaml", "productpage-sidecar.yaml"):
        config = SidecarConfig.from_file(EXAMPLES / name)
        assert config.cert_dir == str(EXAMPLES / "certs" / name.split("-")[0])
    client = SidecarConfig.from_file(EXAMPLES / "productpage-sidecar.yaml")
    assert client.outbound[0].upstream == ("127.0.0.1", 16006)
    assert client.outbound[0].cluster_name == "outbound|9080||reviews.default.svc.cluster.local"
    server = SidecarConfig.from_file(EXAMPLES / "reviews-sidecar.yaml")
    assert server.inbound is not None and server.inbound.port == 16006
    assert StatsConfig.parse(str(EXAMPLES / "stats.yaml")).metrics[0].name == "requests_total"
