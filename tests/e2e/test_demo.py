"""``apiproxy demo`` as a newcomer runs it: a process, its output read line by line."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_demo(workdir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apiproxy", "demo", "--once", "--workdir", str(workdir), *flags],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One run of the tour, read by the tests below (it takes seconds, not worth repeating)."""
    workdir = tmp_path_factory.mktemp("federation") / "demo"
    return workdir, run_demo(workdir)


def test_federation_demo_tells_the_whole_story_and_exits_0(
    federation: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, result = federation
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "FAILED" not in out
    steps = 8
    assert out.count("✓ as expected") == steps, out
    for step in range(8):
        assert f"\n── {step}. " in out, f"step {step} is printed"
    # each side runs the three parts as processes; each proxy denies by default before anyone is trusted
    for command in ("apiproxy serve", "apiproxy exporter", "apiproxy multicluster"):
        assert len(re.findall(rf"{command} .*\(pid \d+\)", out)) == 2, command
    assert out.count("without a token → 401") == 2
    # both sides' conditions are printed as they change, ending Ready on each side
    for side, peer in (("east", "west"), ("west", "east")):
        assert f"[{side}] {peer}: Ready=True (Established)" in out
        assert f"[{side}] {peer}: PublicMetadataExchangeReady=True (Fetched)" in out
    created_to_ready = re.search(r"both resources created → both sides Ready: (\d+\.\d+)s", out)
    assert created_to_ready is not None and float(created_to_ready.group(1)) < 45
    # each side trusts the other, and the remote secrets point at the other side's proxy
    assert out.count("label istio/multiCluster=true") == 2
    assert "token (not shown)" in out and "eyJ" not in out, "no token is printed"
    # east's istiod reads west's pods and receives a watch event; secrets stay west's
    assert "pods of west" in out and "← MODIFIED" in out
    assert "HTTP 404 NotFound" in out or "HTTP 403 Forbidden" in out
    # deletion on west revokes east within seconds and ends its open watch
    refused = re.search(r"refused at west's proxy \(HTTP 401\) after (\d+\.\d+)s", out)
    closed = re.search(r"open watch closed by west's proxy after (\d+\.\d+)s", out)
    assert refused is not None and float(refused.group(1)) < 10
    assert closed is not None and float(closed.group(1)) < 10
    assert "remote secret for east: gone" in out
    # east rotates its key while its istiod keeps reading west: not one read fails
    reads = re.search(r"during the rotation: (\d+) ok, (\d+) failed", out)
    assert reads is not None and int(reads.group(1)) >= 15 and reads.group(2) == "0"
    assert "2. switched: east re-minted its remote secret with the next key" in out


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_federation_demo_uses_the_real_kubectl_with_the_generated_kubeconfig(
    federation: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    workdir, result = federation
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    kubeconfig = workdir / "east-istiod-kubeconfig-for-west"
    assert f"$ kubectl --kubeconfig {kubeconfig} get pods -A" in out
    assert "kubectl ← " in out, "kubectl's watch printed the change"
    assert "kubectl's watch ended" in out
    assert "No resources found" in out, "secrets are concealed"
    assert re.search(r"west\s+True\s+Established", out), "kubectl get istiomulticlusters on east"


def test_proxy_only_walks_through_every_step_and_exits_0(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", "--proxy-only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("✓ as expected") == 5
    assert "HTTP 401" in result.stdout and "HTTP 403 Forbidden" in result.stdout
    assert "MODIFIED" in result.stdout
    assert "apiproxy_requests_total{" in result.stdout
    assert f"kubectl --kubeconfig {tmp_path / 'demo' / 'kubeconfig-alpha'} get pods -A" in result.stdout


async def test_a_failed_step_is_reported_and_counted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What makes ``--once`` exit non-zero: a step whose check fails is printed as FAILED and counted,
    and the next steps still run."""
    from apiproxy.demo.federation import StepFailed, Tour

    class Alive:
        """A cluster whose processes are all running (the only thing ``step`` asks of it)."""

        def running(self) -> None:
            pass

    tour = Tour(Alive(), Alive(), tmp_path)  # type: ignore[arg-type]

    async def fails() -> str:
        raise StepFailed("east's token was still accepted after 10s")

    async def passes() -> str:
        return "fine"

    assert await tour.step("1. revocation", "it is quick", fails) is False
    assert await tour.step("2. next", "it runs anyway", passes) is True
    out = capsys.readouterr().out
    assert "✗ FAILED: east's token was still accepted after 10s" in out
    assert out.count("✓ as expected") == 1
    assert tour.failures == 1
