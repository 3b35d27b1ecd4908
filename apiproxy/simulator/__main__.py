"""``python -m apiproxy.simulator``: serve a seeded simulated kube-apiserver over TLS until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import ssl
import sys
from pathlib import Path

from apiproxy.certs import ServingFiles, write_serving_bundle
from apiproxy.simulator.app import Simulator
from apiproxy.simulator.seed import seed_mesh

PREFIX = "simulator"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m apiproxy.simulator", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:6443", help="host:port (default %(default)s)")
    p.add_argument(
        "--tls-dir", type=Path, help="CA + serving cert directory (created if absent); plain HTTP if unset"
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="accepted bearer token, one per line (created with a random one if absent)",
    )
    p.add_argument("--pods", type=int, default=300)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--namespaces", type=int, default=8)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--pod-annotation-bytes", type=int, default=0, help="padding per pod, to make lists fat")
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument("--history-limit", type=int, default=10000)
    p.add_argument("--no-record", action="store_true", help="do not keep a log of requests (long runs)")
    return p.parse_args(argv)


def serving_files(directory: Path) -> ServingFiles:
    """Reuse ``simulator-ca.crt``/``simulator.crt``/``simulator.key`` in ``directory``, or write new ones."""
    files = ServingFiles(
        directory / f"{PREFIX}-ca.crt", directory / f"{PREFIX}.crt", directory / f"{PREFIX}.key"
    )
    if all(f.exists() for f in (files.ca_file, files.cert_file, files.key_file)):
        return files
    return write_serving_bundle(directory, PREFIX)


def load_tokens(path: Path | None) -> set[str]:
    if path is None:
        return {secrets.token_urlsafe(24)}
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    ctx: ssl.SSLContext | None = None
    files: ServingFiles | None = None
    if args.tls_dir is not None:
        files = serving_files(args.tls_dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(files.cert_file, files.key_file)
    tokens = load_tokens(args.token_file)
    sim = Simulator(
        tokens,
        bookmark_interval=args.bookmark_interval,
        history_limit=args.history_limit,
        record_requests=not args.no_record,
    )
    summary = seed_mesh(
        sim.store,
        pods=args.pods,
        services=args.services,
        namespaces=args.namespaces,
        nodes=args.nodes,
        pod_annotation_bytes=args.pod_annotation_bytes,
    )
    await sim.start(host=host, port=int(port), ssl_context=ctx)
    print(f"simulated kube-apiserver at {sim.url}")
    if files is not None:
        print(f"CA certificate: {files.ca_file}")
    if args.token_file is not None:
        print(f"token file: {args.token_file}")
    else:
        print(f"token: {next(iter(tokens))}")
    print("objects: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
