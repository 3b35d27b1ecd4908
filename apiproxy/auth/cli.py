"""Operator commands: ``token mint`` and ``kubeconfig``.

``apiproxy/cli.py`` calls :func:`add_commands` with its subparsers; every leaf parser sets ``func`` to a
function taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from apiproxy import settings
from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import load_private_key
from apiproxy.auth.mint import mint_token
from apiproxy.kubeconfig import render_kubeconfig


def parse_duration(text: str) -> float:
    """A positive duration for ``--ttl``: ``90s``, ``15m``, ``24h``, ``366d``, ``1h30m`` or seconds."""
    try:
        seconds = settings.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return seconds


def _write_output(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def cmd_token_mint(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(Path(args.key).read_bytes())
        token = mint_token(
            key,
            args.subject,
            args.audience,
            issuer=args.issuer,
            scope=args.scope or None,
            ttl=args.ttl,
            algorithm=args.algorithm,
        )
    except (OSError, KeyFormatError, ValueError) as exc:
        print(f"apiproxy token mint: {exc}", file=sys.stderr)
        return 1
    _write_output(token + "\n", args.output)
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        text = render_kubeconfig(
            args.server,
            Path(args.ca_file).read_bytes(),
            token=token,
            client_cert_pem=Path(args.client_cert).read_bytes() if args.client_cert else None,
            client_key_pem=Path(args.client_key).read_bytes() if args.client_key else None,
            name=args.name,
            namespace=args.namespace,
        )
    except (OSError, ValueError) as exc:
        print(f"apiproxy kubeconfig: {exc}", file=sys.stderr)
        return 1
    _write_output(text, args.output)
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``token mint`` and ``kubeconfig``."""
    token = subparsers.add_parser("token", help="bearer tokens for remote clusters")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    mint = token_sub.add_parser(
        "mint",
        help="mint a Deckhouse-format JWT",
        description="Mint a JWT in Deckhouse's format: remote cluster SUBJECT calls the proxy of AUDIENCE.",
    )
    mint.add_argument("--key", required=True, type=Path, help="signing private key (PEM)")
    mint.add_argument("--subject", required=True, help="UUID of the calling (remote) cluster")
    mint.add_argument("--audience", required=True, help="UUID of the cluster running the proxy")
    mint.add_argument("--scope", default="api", help="scope claim (default: api; empty: omit)")
    mint.add_argument("--issuer", default="d8-istio", help="iss claim (default: d8-istio)")
    mint.add_argument("--ttl", type=parse_duration, default=parse_duration("24h"), help="e.g. 15m, 24h, 366d")
    mint.add_argument("--algorithm", default=None, help="JWS alg (default: pinned for the key type)")
    mint.add_argument("--output", "-o", type=Path, default=None, help="write here (mode 0600), not stdout")
    mint.set_defaults(func=cmd_token_mint)

    kc = subparsers.add_parser(
        "kubeconfig",
        help="render a kubeconfig for the proxy",
        description="Render a kubeconfig (kubectl / istiod remote secret) pointing at the proxy.",
    )
    kc.add_argument("--server", required=True, help="https://host:port of the proxy")
    kc.add_argument("--ca-file", required=True, type=Path, help="CA that signed the proxy's serving cert")
    creds = kc.add_mutually_exclusive_group(required=True)
    creds.add_argument("--token-file", type=Path, help="file holding the bearer JWT")
    creds.add_argument("--client-cert", type=Path, help="client certificate (PEM); needs --client-key")
    kc.add_argument("--client-key", type=Path, help="client private key (PEM)")
    kc.add_argument("--name", default="apiproxy", help="cluster/user/context name (default: apiproxy)")
    kc.add_argument("--namespace", default=None, help="default namespace of the context")
    kc.add_argument("--output", "-o", type=Path, default=None, help="write here (mode 0600), not stdout")
    kc.set_defaults(func=cmd_kubeconfig)
