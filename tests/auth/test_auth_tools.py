"""Operator tools: token minting in Deckhouse's exact format, kubeconfig rendering, the CLI commands."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apiproxy.auth.cli import add_commands, parse_duration
from apiproxy.auth.jwt import TokenVerifier
from apiproxy.auth.keys import b64url_decode, load_private_key, public_key_pem
from apiproxy.auth.mint import mint_token
from apiproxy.auth.truststore import TrustStore, parse_trust_json
from apiproxy.certs import make_ca, make_leaf
from apiproxy.kubeconfig import render_kubeconfig
from tests.auth.helpers import ALPHA, FIXTURES, LOCAL, NOW, Clock

ALPHA_KEY = (FIXTURES / "alpha-priv.pem").read_bytes()
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def segments(token: str) -> tuple[bytes, dict[str, object]]:
    header, claims, _ = token.split(".")
    return b64url_decode(header), json.loads(b64url_decode(claims))


def test_mint_reproduces_the_deckhouse_token_byte_for_byte() -> None:
    fixture = (FIXTURES / "alpha-api.jwt").read_text().strip()
    _, claims = segments(fixture)
    nbf, exp = int(claims["nbf"]), int(claims["exp"])  # type: ignore[call-overload]
    assert mint_token(ALPHA_KEY, ALPHA, LOCAL, now=nbf, ttl=exp - nbf) == fixture


def test_minted_token_has_the_fixture_layout() -> None:
    fixture_header, fixture_claims = segments((FIXTURES / "alpha-private-scope.jwt").read_text().strip())
    token = mint_token(ALPHA_KEY, ALPHA, LOCAL, ttl=3600, now=NOW)
    header, claims = segments(token)
    assert header == fixture_header == b'{"alg":"EdDSA"}'
    assert list(claims) == list(fixture_claims) == ["iss", "aud", "sub", "scope", "nbf", "exp"]
    assert claims["exp"] == int(NOW) + 3600
    assert " " not in b64url_decode(token.split(".")[1]).decode()


def test_mint_verify_round_trip(deckhouse_store: TrustStore) -> None:
    token = mint_token(load_private_key(ALPHA_KEY), ALPHA, LOCAL, ttl=86400, now=NOW)
    assert TokenVerifier(deckhouse_store, LOCAL, clock=Clock()).verify(token).cluster_uuid == ALPHA


@pytest.mark.parametrize("alg", ["RS256", "PS256", None])
def test_mint_rsa(alg: str | None) -> None:
    key = rsa.generate_private_key(65537, 2048)
    entry = {"authnKeyPub": public_key_pem(key.public_key()).decode()}
    store = parse_trust_json(json.dumps({"r": entry}).encode())
    token = mint_token(key, "r", LOCAL, ttl=60, now=NOW, algorithm=alg)
    assert segments(token)[0] == json.dumps({"alg": alg or "RS256"}, separators=(",", ":")).encode()
    assert TokenVerifier(store, LOCAL, clock=Clock()).verify(token).subject == "r"


def test_mint_refuses_mismatched_algorithm() -> None:
    with pytest.raises(ValueError):
        mint_token(ALPHA_KEY, ALPHA, LOCAL, ttl=60, algorithm="RS256")
    with pytest.raises(ValueError):
        mint_token(ec.generate_private_key(ec.SECP256R1()), "x", LOCAL, ttl=60, algorithm="ES384")
    with pytest.raises(ValueError):
        mint_token(ALPHA_KEY, ALPHA, LOCAL, ttl=0)


def test_ttl_takes_the_shared_duration_syntax() -> None:
    # The syntax itself is tested with the settings' parser (tests/unit/test_settings.py).
    assert parse_duration("1h30m") == 5400
    assert parse_duration("366d") == 366 * 86400


@pytest.mark.parametrize("text", ["", "h", "10x", "-5m", "0", "1h 30m", "m15", "inf", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


# --- kubeconfig --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_pem() -> bytes:
    return make_ca("apiproxy serving CA").cert_pem


def test_kubeconfig_with_token(ca_pem: bytes) -> None:
    text = render_kubeconfig(
        "https://proxy.example:4443", ca_pem, token="a.b.c", name="alpha", namespace="d8-istio"
    )
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Config" and doc["current-context"] == "alpha"
    cluster = doc["clusters"][0]
    assert cluster["name"] == "alpha" and cluster["cluster"]["server"] == "https://proxy.example:4443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == ca_pem
    assert doc["users"] == [{"name": "alpha", "user": {"token": "a.b.c"}}]
    assert doc["contexts"] == [
        {"name": "alpha", "context": {"cluster": "alpha", "user": "alpha", "namespace": "d8-istio"}}
    ]


def test_kubeconfig_with_client_cert(ca_pem: bytes) -> None:
    leaf = make_leaf(make_ca("client ca"), "istiod", client=True, server=False)
    text = render_kubeconfig(
        "https://10.0.0.1", ca_pem, client_cert_pem=leaf.cert_pem, client_key_pem=leaf.key_pem
    )
    user = yaml.safe_load(text)["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == leaf.cert_pem
    assert base64.b64decode(user["client-key-data"]) == leaf.key_pem


@pytest.mark.parametrize(
    ("server", "kwargs"),
    [
        ("http://proxy", {"token": "t"}),
        ("proxy:4443", {"token": "t"}),
        ("https://proxy", {}),
        ("https://proxy", {"token": "a b"}),
        ("https://proxy", {"client_cert_pem": b"x"}),
    ],
)
def test_kubeconfig_rejects(ca_pem: bytes, server: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_kubeconfig(server, ca_pem, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        render_kubeconfig("https://proxy", b"not a cert", token="t")


@pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl not installed")
def test_kubectl_accepts_the_kubeconfig(tmp_path: Path, ca_pem: bytes) -> None:
    token = (FIXTURES / "alpha-api.jwt").read_text().strip()
    path = tmp_path / "kubeconfig"
    path.write_text(render_kubeconfig("https://127.0.0.1:4443", ca_pem, token=token, name="alpha"))
    out = subprocess.run(
        [KUBECTL, "config", "view", "--kubeconfig", str(path), "--raw", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    doc = json.loads(out.stdout)
    assert doc["current-context"] == "alpha"
    assert doc["users"][0]["user"]["token"] == token
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == ca_pem


# --- CLI ---------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apiproxy")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


def test_cli_token_mint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], deckhouse_store: TrustStore
) -> None:
    key = tmp_path / "alpha-priv.pem"
    key.write_bytes(ALPHA_KEY)
    assert (
        run(["token", "mint", "--key", str(key), "--subject", ALPHA, "--audience", LOCAL, "--ttl", "15m"])
        == 0
    )
    token = capsys.readouterr().out.strip()
    header, claims = segments(token)
    assert header == b'{"alg":"EdDSA"}' and claims["exp"] == claims["nbf"] + 900  # type: ignore[operator]
    assert TokenVerifier(deckhouse_store, LOCAL).verify(token).cluster_uuid == ALPHA

    out = tmp_path / "token.jwt"
    argv = ["token", "mint", "--key", str(key), "--subject", ALPHA, "--audience", LOCAL, "-o", str(out)]
    assert run([*argv, "--scope", "", "--issuer", "me"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert list(segments(out.read_text().strip())[1]) == ["iss", "aud", "sub", "nbf", "exp"]


def test_cli_token_mint_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["token", "mint", "--key", str(tmp_path / "nope"), "--subject", "s", "--audience", "a"]) == 1
    assert "apiproxy token mint:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(
            ["token", "mint", "--key", "k", "--subject", "s", "--audience", "a", "--ttl", "soon"]
        )


def test_cli_kubeconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str], ca_pem: bytes) -> None:
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "t.jwt").write_text("a.b.c\n")
    base = ["kubeconfig", "--server", "https://p:4443", "--ca-file", str(tmp_path / "ca.pem")]
    assert run([*base, "--token-file", str(tmp_path / "t.jwt"), "--name", "alpha"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["users"][0] == {"name": "alpha", "user": {"token": "a.b.c"}}

    leaf = make_leaf(make_ca("c"), "istiod", client=True)
    leaf.write(tmp_path / "c.pem", tmp_path / "k.pem")
    argv = [*base, "--client-cert", str(tmp_path / "c.pem"), "--client-key", str(tmp_path / "k.pem")]
    assert run([*argv, "-o", str(tmp_path / "kc")]) == 0
    assert "client-key-data" in yaml.safe_load((tmp_path / "kc").read_text())["users"][0]["user"]

    assert run([*base, "--client-cert", str(tmp_path / "c.pem")]) == 1
    assert "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args([*base, "--token-file", "t", "--client-cert", "c"])


def test_ed25519_key_round_trips_through_deckhouse_pem() -> None:
    key = load_private_key(ALPHA_KEY)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert base64.b64encode(pkcs8) in ALPHA_KEY.replace(b"\n", b"")
