"""Recorded API responses for the upstream, made by the simulator, and the nginx that serves them.

The simulator builds realistic objects (pods with sidecars, services, endpointslices, nodes); they are
serialised once to files here, so the upstream during the run is Debian's nginx reading files, far faster
than anything under test. What nginx serves, by path (query strings are ignored, except ``continue``):

- ``/version``: a kube-apiserver version document;
- ``/api/v1/namespaces/bench/pods/small``: one pod (the small GET), with ``Content-Length``;
- ``/api/v1/namespaces/bench/pods``: a PodList of about ``large_bytes`` (the large LIST), sent chunked
  (an identity ``sub_filter`` makes nginx drop ``Content-Length``, as kube-apiserver does for lists);
- ``/api/v1/pods``, ``/api/v1/services``, ``/apis/discovery.k8s.io/v1/endpointslices``, ``/api/v1/nodes``:
  pages of ``limit`` items chained by ``metadata.continue`` (the istiod-restart burst).

Every request must carry the upstream's bearer token, as the proxy's own credential would be checked.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiproxy.simulator import seed_mesh
from apiproxy.simulator.store import Store

#: The resources of the istiod-restart burst: name → (path, kind of list, object count at scale 1).
BURST = {
    "pods": ("/api/v1/pods", "PodList", "v1", 10_000),
    "services": ("/api/v1/services", "ServiceList", "v1", 2_000),
    "endpointslices": (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        2_000,
    ),
    "nodes": ("/api/v1/nodes", "NodeList", "v1", 500),
}
SMALL_GET_PATH = "/api/v1/namespaces/bench/pods/small"
LARGE_LIST_PATH = "/api/v1/namespaces/bench/pods"
#: What istiod sends first for pods; the others differ only in the selector.
BURST_QUERY = {"pods": "fieldSelector=status.phase%21%3DFailed&"}


@dataclass
class Recorded:
    docroot: Path
    small_get_bytes: int = 0
    large_list_bytes: int = 0
    burst_counts: dict[str, int] = field(default_factory=dict)
    burst_bytes: dict[str, int] = field(default_factory=dict)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)


def _templates() -> dict[str, dict[str, Any]]:
    store = Store()
    seed_mesh(store, pods=24, services=8, namespaces=4, nodes=3)
    out: dict[str, dict[str, Any]] = {}
    for plural in ("pods", "services", "endpointslices", "nodes"):
        objs = [so.to_dict() for so in store.collection(plural).iter_from(None)]
        # The largest of its kind is an application object (a pod with its sidecar, a busy slice).
        out[plural] = max(objs, key=lambda o: len(json.dumps(o)))
    pods = [so.to_dict() for so in store.collection("pods").iter_from(None)]
    out["small_pod"] = min(pods, key=lambda o: abs(len(json.dumps(o)) - 2048))
    return out


def _named(template: dict[str, Any], i: int) -> bytes:
    obj = copy.deepcopy(template)
    meta = obj["metadata"]
    meta["name"] = f"{meta['name'][:40]}-{i:06d}"
    meta["uid"] = f"00000000-0000-4000-8000-{i:012d}"
    meta["resourceVersion"] = str(1000 + i)
    return json.dumps(obj, separators=(",", ":")).encode()


def _list_doc(kind: str, api_version: str, items: list[bytes], cont: str, remaining: int) -> bytes:
    meta: dict[str, Any] = {"resourceVersion": "999999"}
    if cont:
        meta["continue"] = cont
        meta["remainingItemCount"] = remaining
    head = json.dumps({"kind": kind, "apiVersion": api_version, "metadata": meta}, separators=(",", ":"))
    return head[:-1].encode() + b',"items":[' + b",".join(items) + b"]}"


def record(docroot: Path, *, scale: float, large_bytes: int, limit: int = 500) -> Recorded:
    """Write every response file under ``docroot``; ``scale`` multiplies the burst's object counts."""
    docroot.mkdir(parents=True, exist_ok=True)
    tpl = _templates()
    rec = Recorded(docroot, templates=tpl)
    (docroot / "version.json").write_text(
        json.dumps({"major": "1", "minor": "30", "gitVersion": "v1.30.6", "platform": "linux/amd64"})
    )
    small = copy.deepcopy(tpl["small_pod"])
    small["metadata"]["name"], small["metadata"]["namespace"] = "small", "bench"
    small_bytes = json.dumps(small, separators=(",", ":")).encode()
    (docroot / "small-pod.json").write_bytes(small_bytes)
    rec.small_get_bytes = len(small_bytes)

    one = _named(tpl["pods"], 0)
    count = max(1, large_bytes // (len(one) + 1))
    items = [_named(tpl["pods"], i) for i in range(count)]
    body = _list_doc("PodList", "v1", items, "", 0)
    (docroot / "large-list.json").write_bytes(body)
    rec.large_list_bytes = len(body)

    for plural, (_path, kind, api_version, n) in BURST.items():
        total = max(1, int(n * scale))
        folder = docroot / "lists" / plural
        folder.mkdir(parents=True, exist_ok=True)
        size = 0
        pages = (total + limit - 1) // limit
        for page in range(pages):
            start = page * limit
            chunk = [_named(tpl[plural], i) for i in range(start, min(total, start + limit))]
            cont = str(page + 1) if page + 1 < pages else ""
            doc = _list_doc(kind, api_version, chunk, cont, max(0, total - start - len(chunk)))
            (folder / f"{page}.json").write_bytes(doc)
            size += len(doc)
        rec.burst_counts[plural] = total
        rec.burst_bytes[plural] = size
    return rec


def nginx_config(
    workdir: Path, docroot: Path, port: int, cert: Path, key: Path, token: str, *, workers: int = 1
) -> Path:
    """A self-contained nginx.conf: foreground, ``workers`` worker processes (one unless told), every path
    under ``workdir`` (so two nginx need two workdirs)."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / f"nginx-{sub}").mkdir(parents=True, exist_ok=True)
    lists = "\n".join(
        f"    location = {path} {{ try_files /lists/{plural}/$page.json =404; }}"
        for plural, (path, *_rest) in BURST.items()
    )
    conf = f"""
worker_processes {workers};
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/nginx-client_body;
  proxy_temp_path {workdir}/nginx-proxy;
  fastcgi_temp_path {workdir}/nginx-fastcgi;
  uwsgi_temp_path {workdir}/nginx-uwsgi;
  scgi_temp_path {workdir}/nginx-scgi;
  default_type application/json;
  types {{ }}
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  etag off;
  server_tokens off;
  map $arg_continue $page {{ "" "0"; default $arg_continue; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:bench:10m;
    root {docroot};
    if ($http_authorization != "Bearer {token}") {{
      return 401 '{{"kind":"Status","apiVersion":"v1","status":"Failure","code":401}}';
    }}
    location = /version {{ try_files /version.json =404; }}
    location = {SMALL_GET_PATH} {{ try_files /small-pod.json =404; }}
    location = {LARGE_LIST_PATH} {{
      sub_filter_types application/json;
      sub_filter_once on;
      sub_filter '"kind":"PodList"' '"kind":"PodList"';
      try_files /large-list.json =404;
    }}
{lists}
    location / {{ return 404 '{{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}}'; }}
  }}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path
