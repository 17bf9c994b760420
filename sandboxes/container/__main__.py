"""Command line of the container engine: `python -m sandboxes.container
build-image|base-image|check`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .._errors import SandboxError
from ._docker import Docker
from ._image import build_image_offline, ensure_base_image, image_is_current
from ._spec import DEFAULT_IMAGE


def _say(line: str) -> None:
    print(line, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.container")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-image", help="build the sandbox image without a registry")
    build.add_argument("--tag", default=DEFAULT_IMAGE, help="image tag (%(default)s)")
    build.add_argument("--docker-host", default=None, help="daemon address (default: local)")
    build.add_argument(
        "--if-missing", action="store_true", help="do nothing when the image is current"
    )
    build.add_argument("--force", action="store_true", help="rebuild everything")
    base = commands.add_parser(
        "base-image",
        help="import the base image when missing (debootstrap once) and print its tag",
    )
    base.add_argument("--docker-host", default=None, help="daemon address (default: local)")
    check = commands.add_parser("check", help="start the engine once and run print('hello')")
    check.add_argument("--tag", default=DEFAULT_IMAGE, help="image tag (%(default)s)")
    check.add_argument("--runtime", choices=("runc", "runsc"), default="runc")
    return parser


async def _check(tag: str, runtime: str) -> int:
    import tempfile
    from pathlib import Path

    from .._types import ExecutionPlan, Limits, Program, WorkspacePaths
    from ._engine import ContainerEngine

    with tempfile.TemporaryDirectory() as scratch:
        files, site = Path(scratch, "files"), Path(scratch, "site")
        files.mkdir()
        site.mkdir()
        plan = ExecutionPlan(
            decision_id="check",
            engine="container",
            program=Program("code", "print('hello from the sandbox')"),
            limits=Limits(wall_timeout_s=20),
            workspace=WorkspacePaths(files, site),
            session_id="check",
        )
        engine = ContainerEngine(
            runtime="runsc" if runtime == "runsc" else "runc",
            image=tag,
            pool_size=0,
            progress=_say,
        )
        async with engine:
            result = await engine.run(plan)
    _say(f"{runtime}: {result.status}: {result.stdout.strip()} ({result.usage.wall_ms:.0f} ms)")
    return 0 if result.status == "ok" else 1


def cli_logic(argv: Sequence[str]) -> int:
    """Run the command line with `argv` (without the program name); returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        if args.command == "check":
            return asyncio.run(_check(args.tag, args.runtime))
        if args.command == "base-image":
            progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
            print(ensure_base_image(progress=progress, docker_host=args.docker_host))
            return 0
        if args.if_missing and not args.force:
            docker = Docker.connect(args.docker_host)
            try:
                if image_is_current(docker, args.tag):
                    _say(f"image: {args.tag} is current")
                    return 0
            finally:
                docker.close()
        build_image_offline(args.tag, progress=_say, docker_host=args.docker_host, force=args.force)
        return 0
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(cli_logic(sys.argv[1:]))


if __name__ == "__main__":
    main()
