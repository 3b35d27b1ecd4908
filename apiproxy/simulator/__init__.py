"""A simulated kube-apiserver: the upstream for the demo, the end-to-end tests and the benchmarks.

It answers like kube-apiserver wherever a proxy, kubectl or client-go can tell: discovery, ``Status``
errors, LIST paging with ``continue`` and 410 Expired, JSON watches with bookmarks, streaming lists and
the too-old-resourceVersion ERROR event, Table and PartialObjectMetadata conversions, and writes with
optimistic concurrency. It speaks JSON only (protobuf-only requests get 406).

    sim = Simulator(tokens={"sa-token"}, bookmark_interval=60.0, history_limit=10000)
    seed_mesh(sim.store, pods=300, services=100, namespaces=8, nodes=5)
    await sim.start(host="127.0.0.1", port=0, ssl_context=server_ctx)
    ...
    await sim.stop()
"""

from apiproxy.simulator.app import RecordedRequest, Simulator
from apiproxy.simulator.resources import RESOURCES, ResourceType
from apiproxy.simulator.seed import SeedSummary, seed_mesh
from apiproxy.simulator.store import Event, Store, StoredObject, Watcher

__all__ = [
    "RESOURCES",
    "Event",
    "RecordedRequest",
    "ResourceType",
    "SeedSummary",
    "Simulator",
    "Store",
    "StoredObject",
    "Watcher",
    "seed_mesh",
]
