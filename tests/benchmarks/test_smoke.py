"""A smoke run of every benchmark scenario at tiny size: each one must produce its figures.

Benchmarks are not tests of speed: nothing here looks at a value, only that the harness, every target
(direct, proxy, kubectl proxy) and every scenario work end to end. Needs Debian's nginx and wrk and a
kubectl; without them the test is skipped, or fails when the environment variable CI is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import SCENARIOS, missing_tools

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("direct", "proxy", "kubectl")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    missing = missing_tools()
    if missing:
        message = f"benchmark tools missing: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"doc": json.loads((out / "latest.json").read_text()), "out": out, "stdout": proc.stdout}


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_produced_figures(result: dict, name: str) -> None:
    scenario = result["doc"]["scenarios"][name]
    assert "error" not in scenario, scenario.get("error")
    assert len(scenario) > 1


@pytest.mark.parametrize(
    ("name", "figure"),
    [
        ("small_get_throughput", "rps"),
        ("small_get_machine", "rps"),
        ("small_get_latency", "p99_ms"),
        ("large_list", "MBps"),
        ("large_list_machine", "MBps"),
        ("watches", "event_p99_ms"),
        ("istiod_burst", "seconds"),
    ],
)
def test_load_scenarios_measured_every_target(result: dict, name: str, figure: str) -> None:
    scenario = result["doc"]["scenarios"][name]
    for target in TARGETS:
        assert isinstance(scenario[target][figure], int | float), (target, scenario[target])
    assert set(scenario["ratios"]) == {"proxy/direct", "proxy/kubectl"}


def test_small_get_latency_rounds_recorded(result: dict) -> None:
    latency = result["doc"]["scenarios"]["small_get_latency"]
    rounds = latency["rounds"]
    assert rounds >= 2
    # Every target in every round, round i starting with target i mod 3.
    assert len(latency["round_order"]) == rounds
    for i, order in enumerate(latency["round_order"]):
        assert sorted(order) == sorted(TARGETS)
        assert order[0] == TARGETS[i % len(TARGETS)]
    for target in TARGETS:
        per_round = latency[target]["round_p50_ms"]
        assert len(per_round) == rounds
        assert all(isinstance(x, int | float) for x in per_round)
    for prefix in ("", "kubectl_"):
        assert len(latency[f"{prefix}added_p50_ms_rounds"]) == rounds
        assert set(latency[f"{prefix}added_p50_ms_spread"]) == {"min", "max"}
    for key in ("added_p50_ms", "added_p90_ms", "added_p99_ms", "kubectl_added_p50_ms"):
        assert isinstance(latency[key], int | float), key
    assert "added p50 per round" in result["stdout"]


@pytest.mark.parametrize("name", ["small_get_throughput", "small_get_machine"])
def test_small_get_throughput_rounds_recorded(result: dict, name: str) -> None:
    scenario = result["doc"]["scenarios"][name]
    rounds = scenario["rounds"]
    assert rounds >= 2
    # Every target in every round, round i starting with target i mod 3.
    assert len(scenario["round_order"]) == rounds
    for i, order in enumerate(scenario["round_order"]):
        assert sorted(order) == sorted(TARGETS)
        assert order[0] == TARGETS[i % len(TARGETS)]
    for target in TARGETS:
        fig = scenario[target]
        for key in ("round_rps", "round_p50_ms", "round_p99_ms"):
            assert len(fig[key]) == rounds, (target, key)
            assert all(isinstance(x, int | float) for x in fig[key]), (target, key)
        assert isinstance(fig["measured_seconds"], int | float)
        assert isinstance(fig["requests"], int)
    assert len(scenario["ratio_rounds"]) == rounds
    assert set(scenario["ratio_spread"]) == {"min", "max"}
    assert isinstance(scenario["ratios"]["proxy/kubectl"], int | float)
    where = "per core" if name == "small_get_throughput" else "whole machine"
    assert f"small GET req/s proxy/kubectl per round, {where}" in result["stdout"]


def test_proxy_memory_and_watch_figures(result: dict) -> None:
    scenarios = result["doc"]["scenarios"]
    for name in ("large_list", "large_list_machine"):
        for key in ("MBps_median", "rss_before_MiB", "peak_rss_MiB", "rss_growth_MiB"):
            assert key in scenarios[name]["proxy"], (name, key)
    watches = scenarios["watches"]["proxy"]
    assert watches["opened"] == watches["requested"]
    for key in ("idle_rss_MiB", "idle_fds", "idle_cpu_percent", "event_count"):
        assert key in watches


def test_whole_machine_layout_and_middlebox_cpu(result: dict) -> None:
    machine = result["doc"]["scenarios"]["small_get_machine"]
    assert machine["layout"] == "unpinned"
    assert machine["proxy_workers"] == (os.cpu_count() or 1)
    assert machine["wrk_threads"] == 2
    for target in ("proxy", "kubectl"):
        assert isinstance(machine[target]["cpu_percent"], int | float), machine[target]
    for target in TARGETS:
        for key in ("upstream_cpu_percent", "wrk_cpu_percent"):
            assert isinstance(machine[target][key], int | float), (target, key)
    # CPU summed over the supervisor and its workers (a single process when there is one CPU).
    workers = machine["proxy_workers"]
    assert machine["proxy"]["processes"] >= (workers + 1 if workers > 1 else 1)


def test_large_list_whole_machine_layout(result: dict) -> None:
    machine = result["doc"]["scenarios"]["large_list_machine"]
    assert machine["layout"] == "unpinned"
    assert machine["proxy_workers"] == 1
    assert machine["nginx_workers"] == (os.cpu_count() or 1)
    # The LIST client (the harness) read unpinned: on every CPU it started with.
    assert machine["client_cpus"] == machine["cpus"]
    assert machine["rounds"] == result["doc"]["scenarios"]["large_list"]["rounds"]


def test_small_get_middlebox_cpu_over_its_processes(result: dict) -> None:
    proxy = result["doc"]["scenarios"]["small_get_throughput"]["proxy"]
    assert isinstance(proxy["cpu_percent"], int | float)
    assert proxy["processes"] >= 1


def test_throughput_target_in_both_layouts(result: dict) -> None:
    rows = {row["target"]: row for row in result["doc"]["targets"]}
    per_core = rows["small GET rps proxy/kubectl, per core"]
    machine = rows["small GET rps proxy/kubectl, whole machine"]
    for row in (per_core, machine):
        assert row["bound"] == ">= 1.5"
        assert isinstance(row["value"], int | float)
    assert "whole machine (proxy --workers" in result["stdout"]


def test_large_list_target_in_both_layouts(result: dict) -> None:
    rows = {row["target"]: row for row in result["doc"]["targets"]}
    per_core = rows["large LIST MB/s proxy/direct, per core"]
    machine = rows["large LIST MB/s proxy/direct, whole machine"]
    for row in (per_core, machine):
        assert row["bound"] == ">= 0.8"
        assert isinstance(row["value"], int | float)
    assert machine["layout"] == "unpinned"
    assert machine["proxy_workers"] == 1
    assert "large LIST MB/s (best), whole machine" in result["stdout"]


def test_targets_table_json_and_plots(result: dict) -> None:
    doc, out = result["doc"], result["out"]
    assert {row["target"] for row in doc["targets"]}
    assert "target (issue 7)" in result["stdout"]
    assert list(out.glob("bench-*-samples.json"))
    pytest.importorskip("matplotlib")
    assert list(out.glob("*.png"))
