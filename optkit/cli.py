"""The ``optkit`` command line.

::

    optkit serve model-server --repository DIR [--host H] [--port P] [--config FILE]
    optkit serve gateway --upstream URL[,URL...] [--host H] [--port P] [--config FILE]
    optkit models build --repository DIR [--models a,b] [--seed S] [--force]
    optkit smoke --repository DIR [--duration S]
    optkit bench ...        (see optkit bench --help)

Imports are lazy so a server process starts without loading pandas and friends.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


def _serve(args: argparse.Namespace) -> int:
    from ._config import load_config
    from .service import create_gateway, create_model_server, serve

    config = load_config(args.config)
    host = args.host or config.server.host
    if not _is_loopback(host):
        print(f"optkit: warning: binding {host}, which is not loopback", file=sys.stderr)
    if args.kind == "model-server":
        app = create_model_server(args.repository, config)
    else:
        app = create_gateway(args.upstream, config)
    serve(app, host=host, port=args.port, port_file=args.port_file,
          shutdown_timeout=config.server.shutdown_timeout_s, access_log=config.server.access_log)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _models_build(args: argparse.Namespace) -> int:
    import time

    from ._models import build_repository

    started = time.perf_counter()
    models = args.models.split(",") if args.models else None
    built = build_repository(args.repository, models=models, seed=args.seed, force=args.force)
    from ._repository import ModelRepository

    repo = ModelRepository(args.repository)
    for name in repo.names():
        cfg = repo.config(name)
        acc = cfg.metrics.get("accuracy")
        print(f"  {name:<16} {cfg.backend:<10} " + (f"accuracy {acc:.4f}" if acc else ""))
    print(f"built {len(built)} model group(s) in {time.perf_counter() - started:.1f} s "
          f"into {Path(args.repository).resolve()}")
    return 0


def _smoke(args: argparse.Namespace) -> int:
    from ._smoke import run_smoke

    return run_smoke(args.repository, duration_s=args.duration, config=args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a server (model-server or gateway)")
    serve_sub = serve.add_subparsers(dest="kind", required=True)
    for kind in ("model-server", "gateway"):
        p = serve_sub.add_parser(kind)
        if kind == "model-server":
            p.add_argument("--repository", required=True, help="model repository folder")
        else:
            p.add_argument("--upstream", required=True, help="URL[,URL...] of v2 server(s)")
        p.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
        p.add_argument("--port", type=int, default=8000 if kind == "gateway" else 8001)
        p.add_argument("--config", default=None, help="service config YAML")
        p.add_argument("--port-file", default=None, help="write the bound port here once listening")
        p.set_defaults(func=_serve)

    models = sub.add_parser("models", help="build the model repository")
    models_sub = models.add_subparsers(dest="action", required=True)
    build = models_sub.add_parser("build")
    build.add_argument("--repository", required=True)
    build.add_argument("--models", default=None, help="comma-separated names (default: all)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild models that exist")
    build.set_defaults(func=_models_build)

    smoke = sub.add_parser("smoke", help="start the stack and benchmark it briefly")
    smoke.add_argument("--repository", required=True)
    smoke.add_argument("--duration", type=float, default=5.0)
    smoke.add_argument("--config", default=None)
    smoke.set_defaults(func=_smoke)

    for name, loader in _OPTIONAL_COMMANDS.items():
        add = loader()
        if add is not None:
            add(sub)
    return parser


def _bench_parser() -> Callable[[argparse._SubParsersAction], None] | None:  # type: ignore[type-arg]
    try:
        from .bench._cli import add_parser
    except ImportError:
        return None
    return add_parser


_OPTIONAL_COMMANDS: dict[str, Callable[[], Callable[..., None] | None]] = {"bench": _bench_parser}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from ._exceptions import OptkitError

        if isinstance(exc, OptkitError):
            print(f"optkit: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
