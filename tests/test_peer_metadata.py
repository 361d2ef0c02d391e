"""``PeerMetadata``: Istio's accessors over a node-metadata Struct (telemetry-v2.md §3)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _istio_samples import NODE_ID, REVIEWS_V2
from conftest import Backend

from meshstats.errors import PeerMetadataTypeError
from meshstats.peer_metadata import PeerMetadata, namespace_from_principal


def peer(**fields: object) -> PeerMetadata:
    return PeerMetadata.from_struct(fields)


def test_reviews_accessors() -> None:
    p = PeerMetadata.from_struct(REVIEWS_V2, NODE_ID)
    assert p.name == "reviews-v2-5b667bcbf8-9xk2p"
    assert p.namespace == "bookinfo"
    assert p.workload_name == "reviews-v2"
    assert p.workload_type == "deployment"
    assert p.owner == REVIEWS_V2["OWNER"]
    assert p.cluster_id == "Kubernetes"
    assert p.mesh_id == "cluster.local"
    assert p.service_account == "bookinfo-reviews"
    assert p.istio_version == "1.22.3"
    assert p.app == "reviews" and p.version == "v2"
    assert p.canonical_service == "reviews" and p.canonical_revision == "v2"
    assert p.instance_ips == ["10.44.0.7", "fd00:10:44::7"]
    assert dict(p.platform_metadata) == REVIEWS_V2["PLATFORM_METADATA"]
    assert dict(p.labels) == REVIEWS_V2["LABELS"]
    assert p.node_id == NODE_ID
    assert p.identity is None and p.region is None and p.availability_zone is None


def test_missing_fields_are_none_never_keyerror() -> None:
    p = PeerMetadata.from_struct({})
    for name in (
        "name", "namespace", "workload_name", "workload_type", "owner", "cluster_id",
        "mesh_id", "service_account", "istio_version", "app", "version",
        "canonical_service", "canonical_revision", "identity", "region",
        "availability_zone", "node_id",
    ):  # fmt: skip
        assert getattr(p, name) is None, name
    assert dict(p.labels) == {} and dict(p.platform_metadata) == {}
    assert p.instance_ips == []
    assert p.to_filter_state() == {}
    assert p.get("NAME") is None and "NAME" not in p
    with pytest.raises(KeyError):
        p["NAME"]  # the Mapping itself still behaves like a mapping


def test_non_string_values_read_as_none() -> None:
    p = peer(NAMESPACE=3, LABELS="not a map", WORKLOAD_NAME=["x"], INSTANCE_IPS=7)
    assert p.namespace is None and p.workload_name is None
    assert dict(p.labels) == {} and p.app is None and p.instance_ips == []


@pytest.mark.parametrize(
    ("labels", "app", "version"),
    [
        ({"app": "a", "version": "v"}, "a", "v"),
        ({"app.kubernetes.io/name": "k8s-a", "app": "a"}, "k8s-a", None),
        ({"app.kubernetes.io/version": "2.0", "version": "v"}, None, "2.0"),
        (
            {
                "app": "a",
                "app.kubernetes.io/name": "n",
                "version": "v",
                "app.kubernetes.io/version": "w",
            },
            "n",
            "w",
        ),
        ({"app.kubernetes.io/name": "", "app": "a"}, "", None),  # present wins, even empty
        ({}, None, None),
    ],
)
def test_app_version_precedence(
    labels: dict[str, str], app: str | None, version: str | None
) -> None:
    p = peer(LABELS=labels)
    assert (p.app, p.version) == (app, version)


@pytest.mark.parametrize(
    ("owner", "workload", "kind"),
    [
        ("kubernetes://apis/apps/v1/namespaces/ns/deployments/web", "web", "deployment"),
        ("kubernetes://apis/batch/v1/namespaces/ns/jobs/migrate", "migrate", "job"),
        ("kubernetes://apis/batch/v1/namespaces/ns/cronjobs/nightly", "nightly", "cronjob"),
        ("kubernetes://apis/batch/v1beta1/namespaces/ns/cronjobs/nightly", "nightly", "cronjob"),
        ("kubernetes://apis/v1/namespaces/ns/pods/standalone", "standalone", "pod"),
        ("kubernetes://apis/apps/v1/namespaces/ns/statefulsets/db", "db", None),
        ("kubernetes://apis/apps/v1/namespaces/ns/daemonsets/agent", "agent", None),
        ("kubernetes://apis/apps/v1/namespaces/ns/deployments/other", "reviews-v2", None),
        ("deployments/reviews-v2", "reviews-v2", None),  # no segment before the type
        ("", "reviews-v2", None),
        ("kubernetes://apis/apps/v1/namespaces/ns/deployments/reviews-v2", None, None),
    ],
)
def test_workload_type(owner: str, workload: str | None, kind: str | None) -> None:
    fields: dict[str, object] = {"OWNER": owner}
    if workload is not None:
        fields["WORKLOAD_NAME"] = workload
    assert PeerMetadata.from_struct(fields).workload_type == kind


@pytest.mark.parametrize(
    ("principal", "namespace"),
    [
        ("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews", "bookinfo"),
        ("spiffe://td/ns/default", "default"),  # no trailing segment: to the end
        ("spiffe://td/ns//sa/x", ""),  # empty, but present
        ("spiffe://td/ns/a/ns/b/sa/x", "a"),  # the first /ns/ wins
        ("spiffe://td/sa/x", None),
        ("spiffe://nsx/sa/x", None),
        ("", None),
        (None, None),
    ],
)
def test_namespace_from_principal(principal: str | None, namespace: str | None) -> None:
    assert namespace_from_principal(principal) == namespace
    assert PeerMetadata.namespace_from_principal(principal) == namespace


def test_instance_ips_forms() -> None:
    assert peer(INSTANCE_IPS="10.0.0.1").instance_ips == ["10.0.0.1"]
    assert peer(INSTANCE_IPS=" 10.0.0.1 , ,fd00::1,").instance_ips == ["10.0.0.1", "fd00::1"]
    assert peer(INSTANCE_IPS=["10.0.0.1", "10.0.0.2"]).instance_ips == ["10.0.0.1", "10.0.0.2"]
    assert peer(INSTANCE_IPS="").instance_ips == []


def test_read_only_and_detached_from_the_source() -> None:
    source = json.loads(json.dumps(REVIEWS_V2))
    p = PeerMetadata.from_struct(source)
    source["LABELS"]["app"] = "changed"
    source["NAME"] = "changed"
    assert p.app == "reviews" and p.name == REVIEWS_V2["NAME"]
    with pytest.raises(TypeError):
        p["NAME"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        p.labels["app"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.new_attribute = 1
    copy = p.to_struct()
    copy["LABELS"]["app"] = "mutable copy"  # type: ignore[index]
    assert p.app == "reviews"


def test_mapping_behaviour_and_to_struct() -> None:
    p = PeerMetadata.from_struct(REVIEWS_V2)
    assert set(p) == set(REVIEWS_V2) and len(p) == len(REVIEWS_V2)
    assert p == REVIEWS_V2 and p.to_struct() == REVIEWS_V2
    assert p == PeerMetadata.from_struct(REVIEWS_V2)
    assert p != PeerMetadata.from_struct(REVIEWS_V2, node_id="other")
    assert p != {**REVIEWS_V2, "NAME": "other"}
    # Lists read as tuples, ints as the floats the wire carries.
    q = peer(L=[1, "a"], N=2, NAN=math.nan)
    assert q["L"] == (1.0, "a") and type(q["N"]) is float
    assert q.to_struct()["L"] == [1.0, "a"]
    assert q == peer(L=[1, "a"], N=2.0, NAN=math.nan)  # NaN equals NaN in a view
    assert "PeerMetadata(" in repr(q)


def test_rejects_what_a_struct_cannot_hold() -> None:
    with pytest.raises(PeerMetadataTypeError):
        PeerMetadata.from_struct({"a": b"bytes"})
    with pytest.raises(PeerMetadataTypeError):
        PeerMetadata.from_struct({"a": {1: "x"}})
    with pytest.raises(PeerMetadataTypeError):
        PeerMetadata.from_struct(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_to_filter_state() -> None:
    fields = dict(REVIEWS_V2)
    fields.update(IDENTITY="spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews")
    fields.update(REGION="europe-west1", AVAILABILITY_ZONE="europe-west1-b")
    fields["LABELS"] = {**REVIEWS_V2["LABELS"], "role": "backend", "tier": "2"}  # type: ignore[dict-item]
    state = PeerMetadata.from_struct(fields).to_filter_state()
    assert state == {
        "type": "deployment",
        "workload": "reviews-v2",
        "name": "reviews-v2-5b667bcbf8-9xk2p",
        "cluster": "Kubernetes",
        "namespace": "bookinfo",
        "service": "reviews",
        "revision": "v2",
        "app": "reviews",
        "version": "v2",
        "identity": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
        "region": "europe-west1",
        "availability_zone": "europe-west1-b",
        "labels": {"role": "backend", "tier": "2"},
    }
    only_role = PeerMetadata.from_struct(fields).to_filter_state(additional_labels=["role", "x"])
    assert only_role["labels"] == {"role": "backend"}
    assert "labels" not in PeerMetadata.from_struct(fields).to_filter_state([])
    # Empty strings are left out, as Istio omits empty fields.
    assert peer(WORKLOAD_NAME="", NAMESPACE="ns").to_filter_state() == {"namespace": "ns"}


def test_from_exchange(backend: Backend) -> None:
    pe = backend.peer_exchange
    exchange = pe.decode_peer_prefix(pe.encode_peer_prefix(REVIEWS_V2, NODE_ID))
    p = PeerMetadata.from_exchange(exchange)
    assert p.node_id == NODE_ID and p == PeerMetadata.from_struct(REVIEWS_V2, NODE_ID)
    header = PeerMetadata.from_struct(pe.decode_peer_header(pe.encode_peer_header(p)))
    assert header.to_struct() == REVIEWS_V2  # a PeerMetadata encodes as a mapping


BOOTSTRAP = {
    "node": {"id": NODE_ID, "cluster": "reviews.bookinfo", "metadata": REVIEWS_V2},
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
}


def test_from_json_text_and_path(tmp_path: Path) -> None:
    text = json.dumps(REVIEWS_V2)
    assert PeerMetadata.from_json(text) == REVIEWS_V2
    path = tmp_path / "node.json"
    path.write_text(text)
    assert PeerMetadata.from_json(path) == REVIEWS_V2
    assert PeerMetadata.from_json(str(path)) == REVIEWS_V2
    assert PeerMetadata.from_file(path) == REVIEWS_V2


def test_bootstrap_forms(tmp_path: Path) -> None:
    p = PeerMetadata.from_json(json.dumps(BOOTSTRAP))
    assert p.node_id == NODE_ID and p == PeerMetadata.from_struct(REVIEWS_V2, NODE_ID)
    dump = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                         "bootstrap": BOOTSTRAP}]}  # fmt: skip
    assert PeerMetadata.from_json(json.dumps(dump)).workload_name == "reviews-v2"
    no_metadata = PeerMetadata.from_struct({"node": {"id": "n1"}})
    assert no_metadata.node_id == "n1" and len(no_metadata) == 0


def test_from_yaml_and_from_file(tmp_path: Path) -> None:
    import yaml  # a test dependency; the path without it is tested below

    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(BOOTSTRAP))
    assert PeerMetadata.from_yaml(path).node_id == NODE_ID
    for name in ("bootstrap.yml", "bootstrap.yaml", "bootstrap.conf"):
        other = tmp_path / name
        other.write_text(yaml.safe_dump(BOOTSTRAP))
        assert PeerMetadata.from_file(other) == PeerMetadata.from_struct(REVIEWS_V2, NODE_ID)
    sniffed_json = tmp_path / "node.txt"
    sniffed_json.write_text(json.dumps(REVIEWS_V2))
    assert PeerMetadata.from_file(sniffed_json) == REVIEWS_V2
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(PeerMetadataTypeError):
        PeerMetadata.from_file(bad)


def test_from_yaml_without_pyyaml_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("NAME: x\n")
    code = (
        "import sys; sys.modules['yaml'] = None\n"
        "from meshstats.peer_metadata import PeerMetadata\n"
        "try:\n"
        f"    PeerMetadata.from_yaml({str(path)!r})\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    import meshstats

    assert meshstats.__file__ is not None
    src = str(Path(meshstats.__file__).parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        check=True,
    )
    assert "pip install pyyaml" in out.stdout
