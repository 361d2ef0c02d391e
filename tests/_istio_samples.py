"""Realistic Istio node metadata and small helpers shared by the codec tests.

The node metadata mirrors what an Istio 1.2x sidecar puts on the wire for the Bookinfo
``reviews-v2`` pod (reference/telemetry-v2.md §3.1, ecosystem.md §3): upper-case keys,
``LABELS`` with the canonical-service labels, ``INSTANCE_IPS`` as one comma-joined string.
"""

from __future__ import annotations

import math

NODE_ID = "sidecar~10.44.0.7~reviews-v2-5b667bcbf8-9xk2p.bookinfo~bookinfo.svc.cluster.local"

REVIEWS_V2: dict[str, object] = {
    "NAME": "reviews-v2-5b667bcbf8-9xk2p",
    "NAMESPACE": "bookinfo",
    "LABELS": {
        "app": "reviews",
        "version": "v2",
        "service.istio.io/canonical-name": "reviews",
        "service.istio.io/canonical-revision": "v2",
    },
    "WORKLOAD_NAME": "reviews-v2",
    "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2",
    "SERVICE_ACCOUNT": "bookinfo-reviews",
    "CLUSTER_ID": "Kubernetes",
    "MESH_ID": "cluster.local",
    "INSTANCE_IPS": "10.44.0.7,fd00:10:44::7",
    "PLATFORM_METADATA": {"gcp_project": "demo-project", "gcp_location": "europe-west1-b"},
    "ISTIO_VERSION": "1.22.3",
}


def same(a: object, b: object) -> bool:
    """Strict structural equality: types must match, NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def as_decoded(tree: object) -> object:
    """What decoding gives back for an encodable tree: ints become floats, tuples lists."""
    if isinstance(tree, bool) or tree is None or isinstance(tree, (str, float)):
        return tree
    if isinstance(tree, int):
        return float(tree)
    if isinstance(tree, dict):
        return {k: as_decoded(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [as_decoded(v) for v in tree]
    raise TypeError(type(tree))
