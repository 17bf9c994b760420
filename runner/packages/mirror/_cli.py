"""`sandgate mirror sync|verify|list`: the operator's commands for the package mirror.

Exit codes: 0 done; 1 a problem stopped the command or `verify` found problems (the message
says which and what to do); 2 wrong usage; 3 `sync` wrote the mirror but some allow-listed
packages could not be fetched for some engine (each is printed; the rest is usable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from ._allowlist import ENGINES, load_allowlist
from ._errors import MirrorError
from ._lock import default_mirror_dir, list_mirror
from ._sync import sync_mirror, verify_mirror

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandgate mirror",
        description="Keep the local wheel mirror that package installs are served from.",
        epilog="Exit codes: 0 done, 1 error or verify problems, 2 usage, "
        "3 sync done with some packages missing (listed).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mirror_help = f"mirror directory (default: {default_mirror_dir()})"

    sync = sub.add_parser(
        "sync", help="download wheels for the allow-list (the only networked step)"
    )
    sync.add_argument(
        "--allowlist",
        required=True,
        type=Path,
        metavar="FILE",
        help="allow-list file (.toml, .yaml)",
    )
    sync.add_argument("--mirror", type=Path, metavar="DIR", help=mirror_help)
    sync.add_argument(
        "--index-url",
        metavar="URL",
        help="upstream simple index (default: pip's configured index-url)",
    )
    sync.add_argument(
        "--engine",
        action="append",
        choices=ENGINES,
        dest="engines",
        help="engine to sync (repeatable; default: all)",
    )

    verify = sub.add_parser("verify", help="re-hash every mirrored wheel against the lock")
    verify.add_argument("--mirror", type=Path, metavar="DIR", help=mirror_help)

    listing = sub.add_parser("list", help="list the locked wheels")
    listing.add_argument("--mirror", type=Path, metavar="DIR", help=mirror_help)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def mirror_main(
    argv: Sequence[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run one `sandgate mirror` command.

    Args:
        argv: The arguments after `sandgate mirror` (e.g. `["verify", "--mirror", "m"]`).
        stdout: Where results go (default `sys.stdout`).
        stderr: Where progress and errors go (default `sys.stderr`).

    Returns:
        The exit code (see the module docstring).
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    mirror = args.mirror if args.mirror is not None else default_mirror_dir()
    try:
        if args.command == "sync":
            return _sync(args, mirror, out, err)
        if args.command == "verify":
            return _verify(mirror, out, err)
        return _list(mirror, bool(args.json), out)
    except MirrorError as exc:
        print(f"sandgate mirror {args.command}: {exc}", file=err)
        return EXIT_ERROR


def _sync(args: argparse.Namespace, mirror: Path, out: TextIO, err: TextIO) -> int:
    allowlist = load_allowlist(args.allowlist)

    def progress(line: str) -> None:
        print(line, file=err, flush=True)

    engines = tuple(dict.fromkeys(args.engines)) if args.engines else ENGINES
    report = sync_mirror(
        allowlist, mirror, index_url=args.index_url, engines=engines, progress=progress
    )
    print(
        f"mirror {report.mirror_dir}: {len(report.locked)} wheel(s) locked from "
        f"{report.index_url}; {len(report.downloaded)} downloaded "
        f"({report.bytes_downloaded} bytes), {len(report.reused)} already present, "
        f"{report.elapsed_s:.1f} s",
        file=out,
    )
    for failure in report.failures:
        print(f"not mirrored: {failure}", file=out)
    return EXIT_OK if report.ok else EXIT_PARTIAL


def _verify(mirror: Path, out: TextIO, err: TextIO) -> int:
    problems = verify_mirror(mirror)
    for problem in problems:
        print(problem, file=out)
    if problems:
        print(
            f"{len(problems)} problem(s) in {mirror}; run `sandgate mirror sync` to fetch "
            "the wheels again",
            file=err,
        )
        return EXIT_ERROR
    print(f"mirror {mirror}: every locked wheel matches its sha256", file=out)
    return EXIT_OK


def _list(mirror: Path, as_json: bool, out: TextIO) -> int:
    packages = list_mirror(mirror)
    if as_json:
        print(json.dumps([asdict(p) for p in packages], indent=2), file=out)
        return EXIT_OK
    for pkg in packages:
        role = "allowed" if pkg.direct else "dependency"
        print(f"{pkg!s:40} {','.join(pkg.engines):26} {role:10} {pkg.filename}", file=out)
    return EXIT_OK
