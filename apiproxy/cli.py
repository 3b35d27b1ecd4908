"""``apiproxy`` command line: ``serve``, ``demo``, and the operator tools of each module."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from apiproxy import __version__, logs
from apiproxy.proxy.settings import Settings, serve_settings
from apiproxy.settings import add_arguments, parse_settings

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run a coroutine on uvloop when it is installed and wanted, else on asyncio's own loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logging.getLogger("apiproxy").warning(
                "uvloop is not installed: asyncio's TLS costs ~250 KiB more per connection "
                "(pip install 'apiproxy[speedups]')"
            )
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


def _serve(settings: Settings) -> int:
    from apiproxy.proxy.app import ConfigurationError, check_settings, serve

    logs.configure(settings.log_level, settings.log_format)
    try:
        if settings.workers > 1:
            from apiproxy.proxy.workers import supervise

            check_settings(settings)  # fail here, once, rather than in every worker
            return run_async(supervise(settings), use_uvloop=settings.uvloop)
        run_async(serve(settings), use_uvloop=settings.uvloop)
    except (ConfigurationError, ValueError, OSError) as exc:
        print(f"apiproxy: {exc}", file=sys.stderr)
        return 2
    return 0


def _exporter(settings: Any) -> int:
    from apiproxy.exporter.main import ConfigurationError, run_exporter

    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(run_exporter(settings))
    except (ConfigurationError, ValueError, OSError) as exc:
        print(f"apiproxy exporter: {exc}", file=sys.stderr)
        return 2
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    from apiproxy.multicluster.main import keys_rotate

    return keys_rotate(args.kubeconfig, args.namespace)


def _demo(args: argparse.Namespace) -> int:
    from apiproxy.demo.main import run_demo

    return run_demo(once=args.once, workdir=args.workdir, proxy_only=args.proxy_only)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``apiproxy`` parser and its ``serve`` subparser (which ``--config`` re-parses)."""
    parser, subparsers = _build_parsers()
    return parser, subparsers["serve"]


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``apiproxy`` parser and the subparsers whose ``--config`` is re-parsed, by command."""
    from apiproxy.auth.cli import add_commands as add_auth_commands
    from apiproxy.exporter.settings import ExporterSettings
    from apiproxy.multicluster.settings import MulticlusterSettings
    from apiproxy.policy.cli import add_commands as add_policy_commands

    parser = argparse.ArgumentParser(
        prog="apiproxy",
        description="Authenticated, read-only, audited Kubernetes API access for federated clusters.",
    )
    parser.add_argument("--version", action="version", version=f"apiproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the proxy",
        description="Terminate TLS, authenticate the remote cluster, authorize against the policy, "
        "and stream the request to the apiserver with the proxy's own credentials.",
    )
    add_arguments(serve, Settings)

    exporter = sub.add_parser(
        "exporter",
        help="publish this cluster's federation metadata",
        description="Serve Deckhouse's public and private metadata documents, built from watched "
        "Kubernetes objects or files.",
    )
    add_arguments(exporter, ExporterSettings)

    multicluster = sub.add_parser(
        "multicluster",
        help="run the IstioMulticluster controller (or print its mesh settings)",
        description="Fetch each peer's metadata, pin its identity, and write the trust store, istiod remote "
        "secrets and mesh settings. 'multicluster mesh-config' prints the mesh settings and exits.",
    )
    multicluster.add_argument(
        "action", nargs="?", choices=("run", "mesh-config"), default="run", help="default: run"
    )
    add_arguments(multicluster, MulticlusterSettings)

    keys = sub.add_parser("keys", help="this cluster's token-signing keypair")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = keys_sub.add_parser(
        "rotate",
        help="start a zero-downtime rotation of the keypair (the controller publishes, switches, promotes)",
    )
    rotate.add_argument("--kubeconfig", default=None, help="default: in-cluster config")
    rotate.add_argument("--namespace", default="d8-istio", help="namespace of d8-remote-authn-keypair")
    rotate.set_defaults(func=_keys_rotate)

    demo = sub.add_parser(
        "demo",
        help="two simulated clusters federate on loopback (proxy, exporter, controller each); a guided tour",
    )
    demo.add_argument(
        "--once", action="store_true", help="run the walk-through, then exit (0 when every step passed)"
    )
    demo.add_argument(
        "--proxy-only",
        action="store_true",
        help="the single-proxy tour: one apiserver and the proxy in front",
    )
    demo.add_argument("--workdir", default=".demo", help="where certificates, tokens and the kubeconfig go")
    demo.set_defaults(func=_demo)

    add_policy_commands(sub)
    add_auth_commands(sub)
    return parser, {"serve": serve, "exporter": exporter, "multicluster": multicluster}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = _build_parsers()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(serve_settings(subparsers["serve"], argv[argv.index("serve") + 1 :]))
    if args.command == "exporter":
        from apiproxy.exporter.settings import ExporterSettings

        rest = argv[argv.index("exporter") + 1 :]
        return _exporter(parse_settings(subparsers["exporter"], rest, ExporterSettings))
    if args.command == "multicluster":
        from apiproxy.multicluster.main import mesh_config, run
        from apiproxy.multicluster.settings import MulticlusterSettings

        rest = argv[argv.index("multicluster") + 1 :]
        settings = parse_settings(subparsers["multicluster"], rest, MulticlusterSettings)
        return mesh_config(settings) if args.action == "mesh-config" else run(settings)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
