"""Turning a benchmark run into a table, the issue's targets met or not, plots and a profile summary."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

#: The targets of the performance issue, as (name, scenario, how to read the figure, comparison, bound).
#: The small-GET throughput and large-LIST MB/s targets are checked in both layouts (see
#: benchmarks/README.md, "Machine caveats").
TARGETS = [
    ("small GET rps proxy/kubectl, per core", "small_get_throughput", ("ratios", "proxy/kubectl"), ">=", 1.5),
    (
        "small GET rps proxy/kubectl, whole machine",
        "small_get_machine",
        ("ratios", "proxy/kubectl"),
        ">=",
        1.5,
    ),
    ("added latency p50 @200 rps (ms)", "small_get_latency", ("added_p50_ms",), "<=", 0.5),
    ("added latency p99 @200 rps (ms)", "small_get_latency", ("added_p99_ms",), "<=", 2.0),
    ("large LIST MB/s proxy/direct, per core", "large_list", ("ratios", "proxy/direct"), ">=", 0.8),
    (
        "large LIST MB/s proxy/direct, whole machine",
        "large_list_machine",
        ("ratios", "proxy/direct"),
        ">=",
        0.8,
    ),
    ("large LIST proxy RSS growth (MiB)", "large_list", ("proxy", "rss_growth_MiB"), "<=", 20.0),
    ("idle watches proxy RSS (MiB)", "watches", ("proxy", "idle_rss_MiB"), "<=", 300.0),
    ("added event delivery p99 (ms)", "watches", ("added_event_p99_ms",), "<=", 10.0),
]


#: The whole-machine scenarios, and the figures of their layout copied into their target rows.
MACHINE_SCENARIOS = {
    "small_get_machine": ("layout", "proxy_workers", "wrk_threads"),
    "large_list_machine": ("layout", "proxy_workers"),
}


def _dig(doc: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)  # type: ignore[assignment]
    return doc


def check_targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, scenario, keys, op, bound in TARGETS:
        value = _dig(scenarios.get(scenario, {}), keys)
        met = None
        if isinstance(value, int | float):
            met = value >= bound if op == ">=" else value <= bound
        row: dict[str, Any] = {"target": name, "value": value, "bound": f"{op} {bound}", "met": met}
        if scenario == "watches" and isinstance(scenarios.get("watches"), dict):
            row["watches"] = scenarios["watches"].get("count")
        if scenario in MACHINE_SCENARIOS and isinstance(scenarios.get(scenario), dict):
            for key in MACHINE_SCENARIOS[scenario]:
                row[key] = scenarios[scenario].get(key)
        out.append(row)
    return out


def pop_samples(doc: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Move the raw latency samples out of the result (they go to their own file and the plots)."""
    samples: dict[str, dict[str, list[float]]] = {}
    for scenario, key in (("small_get_latency", "samples_ms"), ("watches", "event_samples_ms")):
        data = doc["scenarios"].get(scenario, {})
        for target in ("direct", "proxy", "kubectl"):
            if isinstance(data.get(target), dict) and key in data[target]:
                samples.setdefault(scenario, {})[target] = data[target].pop(key)
    return samples


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS: list[tuple[str, str, str, str]] = [
    # scenario, figure, label, ratio key in the scenario's "ratios" (or "" for none)
    ("small_get_throughput", "rps", "small GET req/s (wrk, 32 conns)", "rps"),
    ("small_get_throughput", "p99_ms", "small GET p99 ms under max load", ""),
    ("small_get_throughput", "cpu_percent", "small GET CPU% of the middlebox", ""),
    # {proxy_workers} and the like are filled in from the scenario's figures.
    ("small_get_machine", "rps", "small GET req/s, whole machine (proxy --workers {proxy_workers})", "rps"),
    ("small_get_machine", "p50_ms", "small GET p50 ms, whole machine", ""),
    ("small_get_machine", "p99_ms", "small GET p99 ms, whole machine", ""),
    ("small_get_machine", "cpu_percent", "small GET CPU% of the middlebox, whole machine", ""),
    ("small_get_latency", "p50_ms", "small GET p50 ms @ fixed rate", "p50_ms"),
    ("small_get_latency", "p99_ms", "small GET p99 ms @ fixed rate", "p99_ms"),
    ("large_list", "MBps", "large LIST MB/s (best)", "MBps"),
    ("large_list", "peak_rss_MiB", "large LIST peak RSS MiB", ""),
    ("large_list", "rss_growth_MiB", "large LIST RSS growth MiB", ""),
    ("large_list_machine", "MBps", "large LIST MB/s (best), whole machine", "MBps"),
    ("large_list_machine", "MBps_median", "large LIST MB/s (median), whole machine", "MBps_median"),
    ("large_list_machine", "peak_rss_MiB", "large LIST peak RSS MiB, whole machine", ""),
    ("large_list_machine", "rss_growth_MiB", "large LIST RSS growth MiB, whole machine", ""),
    ("watches", "opened", "watches opened", ""),
    ("watches", "open_seconds", "watches: seconds to open all", "open_seconds"),
    ("watches", "idle_rss_MiB", "idle watches RSS MiB", "idle_rss_MiB"),
    ("watches", "idle_fds", "idle watches open fds", ""),
    ("watches", "idle_cpu_percent", "idle watches CPU%", ""),
    ("watches", "event_p50_ms", "event delivery p50 ms", "event_p50_ms"),
    ("watches", "event_p99_ms", "event delivery p99 ms", "event_p99_ms"),
    ("watches", "events_received", "events received", ""),
    ("istiod_burst", "seconds", "istiod burst seconds (median)", "seconds"),
    ("cold_start", "seconds", "cold start to ready, seconds", "seconds"),
]


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return f"{a / b:.2f}"
    return "-"


def _label(label: str, data: dict[str, Any]) -> str:
    return label.format_map(collections.defaultdict(lambda: "?", data)) if "{" in label else label


def table(doc: dict[str, Any]) -> str:
    sc = doc["scenarios"]
    rows: list[tuple[str, list[Any], str, str]] = []
    for scenario, fig, label, ratio in ROWS:
        data = sc.get(scenario)
        if not isinstance(data, dict) or "error" in data:
            continue
        vals = [data.get(t, {}).get(fig) if isinstance(data.get(t), dict) else None for t in TARGET_NAMES]
        if all(v is None for v in vals):
            continue
        d, p, k = vals
        rd, rk = (_ratio(p, d), _ratio(p, k)) if ratio else ("", "")
        rows.append((_label(label, data), vals, rd, rk))
    width = max([38, *(len(r[0]) for r in rows), *(len(t["target"]) for t in doc.get("targets", []))])
    head = f"{'figure':<{width}} {'direct':>10} {'proxy':>10} {'kubectl':>10} {'px/direct':>9} "
    head += f"{'px/kubectl':>10}"
    lines = [head, "-" * len(head)]
    for label, (d, p, k), rd, rk in rows:
        lines.append(f"{label:<{width}} {_fmt(d):>10} {_fmt(p):>10} {_fmt(k):>10} {rd:>9} {rk:>10}")
    for scenario, where in (("small_get_throughput", "per core"), ("small_get_machine", "whole machine")):
        get = sc.get(scenario, {})
        if isinstance(get.get("ratio_spread"), dict):
            spread = get["ratio_spread"]
            lines.append(
                f"small GET req/s proxy/kubectl per round, {where} ({get['rounds']} interleaved rounds of "
                f"{get['round_seconds']:g} s): {spread['min']:.2f} to {spread['max']:.2f}"
            )
    lat = sc.get("small_get_latency", {})
    if "added_p50_ms" in lat:
        lines.append(
            f"added latency @ {lat['rate']:g} req/s: proxy p50 {lat['added_p50_ms']:+.3f} ms, "
            f"p99 {lat['added_p99_ms']:+.3f} ms; kubectl p50 {lat['kubectl_added_p50_ms']:+.3f} ms, "
            f"p99 {lat['kubectl_added_p99_ms']:+.3f} ms"
        )
    if "added_p50_ms_spread" in lat:
        px, kc = lat["added_p50_ms_spread"], lat["kubectl_added_p50_ms_spread"]
        lines.append(
            f"added p50 per round ({lat['rounds']} interleaved rounds of {lat['round_seconds']:g} s): "
            f"proxy {px['min']:+.3f} to {px['max']:+.3f} ms, kubectl {kc['min']:+.3f} to {kc['max']:+.3f} ms"
        )
    w = sc.get("watches", {})
    if "added_event_p50_ms" in w:
        lines.append(
            f"added event delivery ({w['count']:,} watches, {w['event_rate']:g} events/s): proxy "
            f"p50 {w['added_event_p50_ms']:+.3f} ms, p99 {w['added_event_p99_ms']:+.3f} ms; kubectl "
            f"p50 {w['kubectl_added_event_p50_ms']:+.3f} ms, p99 {w['kubectl_added_event_p99_ms']:+.3f} ms"
        )
    for name, data in sc.items():
        if isinstance(data, dict) and "error" in data:
            lines.append(f"!! {name}: {data['error']}")
    auth = sc.get("auth", {})
    if "cold_us" in auth:
        cold = ", ".join(f"{alg} {v['median']:.0f}" for alg, v in auth["cold_us"].items())
        lines.append(f"auth (median µs): cold {cold}; cached EdDSA {auth['cached_us']['median']:.2f}")
    pol = sc.get("policy", {})
    for name, v in pol.items():
        if isinstance(v, dict) and "classify_decide_us" in v:
            lines.append(
                f"policy {name} ({v['rules']} rules): classify {v['classify_us']:.2f} µs, "
                f"decide {v['decide_us']:.2f} µs, both {v['classify_decide_us']:.2f} µs"
            )
    lines.append("")
    lines.append(f"{'target (issue 7)':<{width}} {'value':>10} {'bound':>10}  met")
    for row in doc.get("targets", []):
        met = {True: "yes", False: "NO", None: "?"}[row["met"]]
        lines.append(f"{row['target']:<{width}} {_fmt(row['value']):>10} {row['bound']:>10}  {met}")
    for note in doc["meta"].get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


TARGET_NAMES = ("direct", "proxy", "kubectl")
COLORS = {"direct": "#4c72b0", "proxy": "#dd8452", "kubectl": "#55a868"}


Samples = dict[str, dict[str, list[float]]]


def plots(doc: dict[str, Any], samples: Samples, out: Path, stem: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        doc["meta"].setdefault("notes", []).append("matplotlib missing: no plots (pip install matplotlib)")
        return []
    made: list[Path] = []
    titles = {
        "small_get_latency": "small GET latency at a fixed rate",
        "watches": "watch event delivery latency",
    }
    for scenario, per_target in samples.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for target, values in per_target.items():
            if not values:
                continue
            s = sorted(values)
            ys = [(i + 1) / len(s) for i in range(len(s))]
            ax.plot(s, ys, label=f"{target} (n={len(s)})", color=COLORS.get(target))
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of requests ≤ x")
        ax.set_title(titles.get(scenario, scenario))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out / f"{stem}-{scenario}-cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    sc = doc["scenarios"]
    bars = [
        ("small_get_throughput", "rps", "small GET req/s"),
        ("small_get_machine", "rps", "small GET req/s, whole machine"),
        ("large_list", "MBps", "large LIST MB/s"),
        ("large_list_machine", "MBps", "large LIST MB/s, whole machine"),
        ("istiod_burst", "seconds", "istiod burst s (lower is better)"),
    ]
    bars = [b for b in bars if isinstance(sc.get(b[0]), dict) and "error" not in sc[b[0]]]
    if bars:
        fig, axes = plt.subplots(1, len(bars), figsize=(4 * len(bars), 4), squeeze=False)
        for ax, (scenario, key, title) in zip(axes[0], bars, strict=True):
            names = [t for t in TARGET_NAMES if isinstance(sc[scenario].get(t), dict)]
            values = [sc[scenario][t].get(key) or 0 for t in names]
            ax.bar(names, values, color=[COLORS[n] for n in names])
            for i, v in enumerate(values):
                ax.annotate(_fmt(v), (i, v), ha="center", va="bottom", fontsize=8)
            ax.set_title(title)
        fig.tight_layout()
        path = out / f"{stem}-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _frame(raw: str) -> str:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    parts = file.rsplit("/", 2)
    short = "/".join(parts[-2:])
    return f"{m.group('func')} ({short})"


def summarize_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive time per function from py-spy's collapsed stacks (``-f raw``)."""
    self_time: collections.Counter[str] = collections.Counter()
    total_time: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";") if f.strip() and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        self_time[frames[-1]] += n
        leaf_file = frames[-1].rpartition("(")[2].rstrip(")")
        by_file[leaf_file] += n
        for f in set(frames):
            total_time[f] += n

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / samples * 100, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": samples,
        "self_percent": pct(self_time),
        "inclusive_percent": pct(total_time),
        "self_percent_by_file": pct(by_file),
    }
