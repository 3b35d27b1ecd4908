import argparse
from pathlib import Path

import pytest

from apiproxy.proxy.settings import Settings, settings_from_args
from apiproxy.settings import parse_duration
from apiproxy.tlsconfig import parse_listen


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("366d", 366 * 86400),
        ("250ms", 0.25),
        ("7", 7),
        ("1.5h", 5400),
        ("1h30m", 5400),
        ("2w", 1209600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1s", "1y", "1 h", "abc", "m15"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:4443", ("0.0.0.0", 4443)),
        (":8443", ("0.0.0.0", 8443)),
        ("[::1]:443", ("::1", 443)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["4443", "host:", "host:port", "h:70000"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_flags_map_to_settings_with_defaults() -> None:
    s = settings_from_args(
        [
            "--tls-cert-file",
            "/c",
            "--jwt-leeway",
            "2m",
            "--cluster-name",
            "u1=alpha",
            "--cluster-name",
            "u2=beta",
        ]
    )
    assert str(s.tls_cert_file) == "/c"
    assert s.jwt_leeway == 120
    assert s.cluster_names() == {"u1": "alpha", "u2": "beta"}
    assert s.listen == Settings().listen == "0.0.0.0:4443"
    assert s.insecure_no_auth is False


def test_bad_flag_values_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--jwt-leeway", "soon"])
    assert "not a duration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        settings_from_args(["--cluster-name", "nouuid"])


def test_every_option_has_help() -> None:
    parser = argparse.ArgumentParser()
    from apiproxy.settings import add_arguments

    add_arguments(parser, Settings)
    text = parser.format_help()
    assert "--upstream-token-file" in text and "--insecure-no-auth" in text


def test_settings_round_trip_through_flags() -> None:
    from pathlib import Path

    from apiproxy.proxy.settings import to_args

    original = Settings(
        tls_cert_file=Path("/c"),
        jwt_leeway=5.0,
        cluster_name=[("u1", "alpha")],
        insecure_no_auth=True,
        uvloop=False,
        listen="127.0.0.1:0",
    )
    assert settings_from_args(to_args(original)) == original


def test_config_file_values_become_defaults_that_flags_override(tmp_path: Path) -> None:
    import argparse

    from apiproxy.proxy.settings import serve_settings
    from apiproxy.settings import add_arguments

    config = tmp_path / "apiproxy.yaml"
    config.write_text(
        "listen: 127.0.0.1:8443\njwt-leeway: 2m\ncluster-name: {u1: alpha}\nrequire-client-cert: true\n"
        "rate-limit-qps: 5\n"
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings)
    s = serve_settings(parser, ["--config", str(config), "--rate-limit-qps", "7"])
    assert s.listen == "127.0.0.1:8443"
    assert s.jwt_leeway == 120
    assert s.cluster_names() == {"u1": "alpha"}
    assert s.require_client_cert is True
    assert s.rate_limit_qps == 7  # the flag wins


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("lisen: 1.2.3.4:1\n", "unknown option 'lisen'"),
        ("tls_cert_file: /x\n", "did you mean 'tls-cert-file'"),
        ("jwt-leeway: soon\n", "option 'jwt-leeway'"),
        ("insecure-no-auth: 'yes'\n", "expected true or false"),
        ("log-level: loud\n", "must be one of"),
        ("- a\n- b\n", "must be a mapping"),
        ("listen: [a, b]\n", "expected a single value"),
    ],
)
def test_bad_config_files_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    from apiproxy.settings import ConfigFileError, load_config

    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigFileError, match=words):
        load_config(config, Settings)
