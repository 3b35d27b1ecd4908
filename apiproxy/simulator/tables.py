"""Server-side printing: ``meta.k8s.io/v1 Table`` columns and cells, as ``kubectl get`` receives them.

Columns follow kube's printers for the types we serve; anything else gets Name/Age like the default
table convertor. Cells are computed from a parsed object, so this only runs for Table requests.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from apiproxy.simulator.resources import ResourceType

Obj = Mapping[str, Any]
Column = tuple[
    str, str, str, int, Callable[[Obj, datetime.datetime], Any]
]  # name, type, format, priority, cell


def human_duration(seconds: float) -> str:
    """kube's ``duration.HumanDuration``: ``45s``, ``5m3s``, ``3h10m``, ``12d`` ..."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years = hours // 24 // 365
        days = hours // 24 % 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age(obj: Obj, now: datetime.datetime) -> str:
    created = _parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    return "<unknown>" if created is None else human_duration((now - created).total_seconds())


def _name(obj: Obj, _now: datetime.datetime) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _get(obj: Obj, *path: str) -> Any:
    cur: Any = obj
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _pod_ready(obj: Obj, _now: datetime.datetime) -> str:
    total = len(_get(obj, "spec", "containers") or [])
    ready = sum(1 for c in _get(obj, "status", "containerStatuses") or [] if c.get("ready"))
    return f"{ready}/{total}"


def _pod_status(obj: Obj, _now: datetime.datetime) -> str:
    if _get(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    for cs in _get(obj, "status", "containerStatuses") or []:
        waiting = _get(cs, "state", "waiting", "reason")
        if waiting:
            return str(waiting)
    return str(_get(obj, "status", "reason") or _get(obj, "status", "phase") or "Unknown")


def _pod_restarts(obj: Obj, _now: datetime.datetime) -> int:
    return sum(int(c.get("restartCount", 0)) for c in _get(obj, "status", "containerStatuses") or [])


def _or_none(*path: str) -> Callable[[Obj, datetime.datetime], str]:
    def cell(obj: Obj, _now: datetime.datetime) -> str:
        value = _get(obj, *path)
        return str(value) if value not in (None, "") else "<none>"

    return cell


def _svc_external(obj: Obj, _now: datetime.datetime) -> str:
    ips = list(_get(obj, "spec", "externalIPs") or [])
    ips += [i.get("ip") or i.get("hostname") for i in _get(obj, "status", "loadBalancer", "ingress") or []]
    if ips:
        return ",".join(str(i) for i in ips)
    return "<pending>" if _get(obj, "spec", "type") == "LoadBalancer" else "<none>"


def _svc_ports(obj: Obj, _now: datetime.datetime) -> str:
    out: list[str] = []
    for p in _get(obj, "spec", "ports") or []:
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _svc_selector(obj: Obj, _now: datetime.datetime) -> str:
    sel = _get(obj, "spec", "selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


def _count(*path: str) -> Callable[[Obj, datetime.datetime], int]:
    def cell(obj: Obj, _now: datetime.datetime) -> int:
        return len(_get(obj, *path) or {})

    return cell


def _node_status(obj: Obj, _now: datetime.datetime) -> str:
    for cond in _get(obj, "status", "conditions") or []:
        if cond.get("type") == "Ready":
            status = "Ready" if cond.get("status") == "True" else "NotReady"
            return status + (",SchedulingDisabled" if _get(obj, "spec", "unschedulable") else "")
    return "Unknown"


def _node_roles(obj: Obj, _now: datetime.datetime) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in (_get(obj, "metadata", "labels") or {}) if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _node_address(kind: str) -> Callable[[Obj, datetime.datetime], str]:
    def cell(obj: Obj, _now: datetime.datetime) -> str:
        for addr in _get(obj, "status", "addresses") or []:
            if addr.get("type") == kind:
                return str(addr.get("address"))
        return "<none>"

    return cell


def _endpoints(obj: Obj, _now: datetime.datetime) -> str:
    out: list[str] = []
    for subset in obj.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or []] or [None]
        for addr in subset.get("addresses") or []:
            out.extend(f"{addr.get('ip')}:{p}" if p else str(addr.get("ip")) for p in ports)
    if not out:
        return "<none>"
    return ",".join(out[:3]) + (f" + {len(out) - 3} more..." if len(out) > 3 else "")


def _slice_ports(obj: Obj, _now: datetime.datetime) -> str:
    ports = [str(p.get("port")) for p in obj.get("ports") or []]
    return ",".join(ports) or "<unset>"


def _slice_endpoints(obj: Obj, _now: datetime.datetime) -> str:
    addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    if not addrs:
        return "<unset>"
    return ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")


NAME: Column = ("Name", "string", "name", 0, _name)
AGE: Column = ("Age", "string", "", 0, _age)

COLUMNS: dict[str, tuple[Column, ...]] = {
    "pods": (
        NAME,
        ("Ready", "string", "", 0, _pod_ready),
        ("Status", "string", "", 0, _pod_status),
        ("Restarts", "string", "", 0, _pod_restarts),
        AGE,
        ("IP", "string", "", 1, _or_none("status", "podIP")),
        ("Node", "string", "", 1, _or_none("spec", "nodeName")),
        ("Nominated Node", "string", "", 1, _or_none("status", "nominatedNodeName")),
        ("Readiness Gates", "string", "", 1, lambda o, n: "<none>"),
    ),
    "services": (
        NAME,
        ("Type", "string", "", 0, _or_none("spec", "type")),
        ("Cluster-IP", "string", "", 0, _or_none("spec", "clusterIP")),
        ("External-IP", "string", "", 0, _svc_external),
        ("Port(s)", "string", "", 0, _svc_ports),
        AGE,
        ("Selector", "string", "", 1, _svc_selector),
    ),
    "namespaces": (NAME, ("Status", "string", "", 0, _or_none("status", "phase")), AGE),
    "nodes": (
        NAME,
        ("Status", "string", "", 0, _node_status),
        ("Roles", "string", "", 0, _node_roles),
        AGE,
        ("Version", "string", "", 0, _or_none("status", "nodeInfo", "kubeletVersion")),
        ("Internal-IP", "string", "", 1, _node_address("InternalIP")),
        ("External-IP", "string", "", 1, _node_address("ExternalIP")),
        ("OS-Image", "string", "", 1, _or_none("status", "nodeInfo", "osImage")),
        ("Kernel-Version", "string", "", 1, _or_none("status", "nodeInfo", "kernelVersion")),
        ("Container-Runtime", "string", "", 1, _or_none("status", "nodeInfo", "containerRuntimeVersion")),
    ),
    "configmaps": (NAME, ("Data", "integer", "", 0, _count("data")), AGE),
    "secrets": (
        NAME,
        ("Type", "string", "", 0, _or_none("type")),
        ("Data", "integer", "", 0, _count("data")),
        AGE,
    ),
    "endpoints": (NAME, ("Endpoints", "string", "", 0, _endpoints), AGE),
    "endpointslices": (
        NAME,
        ("AddressType", "string", "", 0, _or_none("addressType")),
        ("Ports", "string", "", 0, _slice_ports),
        ("Endpoints", "string", "", 0, _slice_endpoints),
        AGE,
    ),
}

_DESCRIPTIONS = {
    "Name": "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically.",
    "Age": "CreationTimestamp is a timestamp representing the server time when this object was created.",
}


_FILTER = re.compile(r"""\[\?\(@\.([A-Za-z0-9_]+)\s*==\s*["']([^"']*)["']\)\]""")
_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")


def json_path(obj: Any, path: str) -> Any:
    """The subset of kube's JSONPath that CRD printer columns use: ``.a.b``, ``[0]``, ``[?(@.k=="v")]``.

    A filter yields the first match (kube prints the first value of a column's result).
    """
    value, rest = obj, path.strip()
    while rest and value is not None:
        filt = _FILTER.match(rest)
        if filt is not None:
            key, want = filt.groups()
            items = value if isinstance(value, list) else []
            value = next((i for i in items if isinstance(i, Mapping) and str(i.get(key)) == want), None)
            rest = rest[filt.end() :]
            continue
        step = _STEP.match(rest)
        if step is None:
            return None
        if step.group(1) is not None:
            value = value.get(step.group(1)) if isinstance(value, Mapping) else None
        else:
            index = int(step.group(2))
            value = value[index] if isinstance(value, list) and index < len(value) else None
        rest = rest[step.end() :]
    return value


def _printer_cell(type_: str, path: str) -> Callable[[Obj, datetime.datetime], Any]:
    def cell(obj: Obj, now: datetime.datetime) -> Any:
        value = json_path(obj, path)
        if value is None:
            return None
        if type_ == "date":
            when = _parse_time(value)
            return human_duration((now - when).total_seconds()) if when else "<invalid>"
        if type_ == "string" and isinstance(value, dict | list):
            return json.dumps(value, separators=(",", ":"))
        return value

    return cell


def columns_for(resource: ResourceType) -> tuple[Column, ...]:
    if resource.printer_columns:
        return (
            NAME,
            *tuple(
                (
                    name,
                    "string" if type_ == "date" else type_,
                    "date" if type_ == "date" else "",
                    priority,
                    _printer_cell(type_, path),
                )
                for name, type_, path, priority in resource.printer_columns
            ),
        )
    return COLUMNS.get(resource.plural, (NAME, AGE))


def column_definitions(resource: ResourceType) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "type": type_,
            "format": fmt,
            "description": _DESCRIPTIONS.get(name, name),
            "priority": priority,
        }
        for name, type_, fmt, priority, _cell in columns_for(resource)
    ]


def cells(resource: ResourceType, obj: Obj, now: datetime.datetime) -> list[Any]:
    return [cell(obj, now) for *_rest, cell in columns_for(resource)]
