"""``apiproxy exporter``'s options: every flag is a --config key, built by serve's machinery."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiproxy.cli import _build_parsers
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.proxy.settings import Settings
from apiproxy.settings import parse_settings


def exporter_settings(argv: list[str]) -> ExporterSettings:
    _, subparsers = _build_parsers()
    settings: ExporterSettings = parse_settings(subparsers["exporter"], argv, ExporterSettings)
    return settings


def test_flags_override_the_config_file_and_durations_read_as_for_serve(tmp_path: Path) -> None:
    config = tmp_path / "exporter.yaml"
    config.write_text(
        "cluster-uuid: abc\napi-host: api.example.com:443\njwt-leeway: 2m\nlisten: 0.0.0.0:9999\n"
    )
    settings = exporter_settings(["--config", str(config), "--listen", "127.0.0.1:8080"])
    assert (settings.cluster_uuid, settings.api_host, settings.jwt_leeway) == (
        "abc",
        "api.example.com:443",
        120.0,
    )
    assert settings.listen == "127.0.0.1:8080"
    assert settings.namespace == "d8-istio" and settings.trust_secret == "d8-remote-clusters-public-metadata"


def test_unknown_config_keys_are_errors_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exporter.yaml"
    config.write_text("policy: /etc/policy.yaml\n")  # a serve option, not an exporter one
    with pytest.raises(SystemExit):
        exporter_settings(["--config", str(config)])
    assert "unknown option 'policy'" in capsys.readouterr().err


def test_serve_keeps_its_own_options() -> None:
    _, subparsers = _build_parsers()
    serve = subparsers["serve"].parse_args([])
    assert not hasattr(serve, "api_host") and hasattr(serve, "policy")
    assert {f for f in vars(serve) if f not in ("config", "command", "func")} == set(
        Settings.__dataclass_fields__
    )
