import subprocess
import sys
from pathlib import Path


def test_demo_once_walks_through_every_step_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apiproxy", "demo", "--once", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("✓ as expected") == 5
    assert "HTTP 401" in result.stdout and "HTTP 403 Forbidden" in result.stdout
    assert "MODIFIED" in result.stdout
    assert "apiproxy_requests_total{" in result.stdout
    assert f"kubectl --kubeconfig {tmp_path / 'demo' / 'kubeconfig-alpha'} get pods -A" in result.stdout
