"""Fixtures for the container engine: a real dockerd, one engine per runtime, tracked clean-up."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from sandboxes import EngineUnavailable, ExecutionPlan, Limits, Program, WorkspacePaths
from sandboxes.container import ContainerEngine, Runtime
from sandboxes.container._docker import Docker
from tests.conftest import IN_CI

RUNTIMES: tuple[Runtime, ...] = ("runc", "runsc")
_ids = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "container: needs a real dockerd (runc and gVisor runsc)")


@pytest.fixture(scope="session")
def docker_api() -> Iterator[Docker]:
    """A connection to the real daemon; skipped when there is none, a failure in CI."""
    try:
        docker = Docker.connect(os.environ.get("DOCKER_HOST"))
    except EngineUnavailable as exc:
        if IN_CI:
            pytest.fail(f"dockerd is required in CI (run scripts/docker-setup.sh): {exc}")
        pytest.skip(f"no Docker daemon: {exc}")
    yield docker
    docker.close()


@dataclass
class Tracker:
    """Every engine instance a test made; their containers are removed at the end, whatever
    happened (docker-py's integration tests do the same)."""

    docker: Docker
    instances: set[str]

    def track(self, engine: ContainerEngine) -> ContainerEngine:
        self.instances.add(engine.instance)
        return engine

    def leftovers(self, instance: str | None = None) -> list[str]:
        """Containers still there of `instance`, or of every tracked instance."""
        wanted = self.instances if instance is None else {instance}
        return [c.id for c in self.docker.labelled() if c.labels.get("sandgate.instance") in wanted]

    def clean(self) -> None:
        for cid in self.leftovers():
            try:
                self.docker.remove(cid)
            except Exception as exc:  # clean-up must go on; say what was left
                print(f"could not remove container {cid[:12]}: {exc}")


@pytest.fixture(scope="session")
def tracker(docker_api: Docker) -> Iterator[Tracker]:
    tracked = Tracker(docker_api, set())
    yield tracked
    tracked.clean()


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("container-pool")


@pytest.fixture(scope="session", params=RUNTIMES)
async def engine(
    request: pytest.FixtureRequest, tracker: Tracker, pool_dir: Path, anyio_backend: str
) -> AsyncIterator[ContainerEngine]:
    """One real engine per runtime, shared by the behaviour tests."""
    runtime: Runtime = request.param
    made = tracker.track(ContainerEngine(runtime=runtime, pool_size=2, pool_dir=pool_dir))
    async with made:
        yield made


@pytest.fixture
def workspace(tmp_path: Path) -> WorkspacePaths:
    """A session workspace laid out like the runner's (root-owned folders, mode 0700)."""
    files, site = tmp_path / "ws" / "files", tmp_path / "ws" / "site"
    files.mkdir(parents=True, mode=0o700)
    site.mkdir(mode=0o700)
    return WorkspacePaths(files, site)


def make_plan(
    workspace: WorkspacePaths,
    source: str,
    *,
    kind: str = "code",
    variable: str | None = None,
    session: str = "s1",
    **limits: Any,
) -> ExecutionPlan:
    """A plan as the gate would make it, with `limits` overriding the defaults."""
    return ExecutionPlan(
        decision_id=f"d{next(_ids)}-{os.getpid()}",
        engine="container",
        program=Program("code" if kind == "code" else "file", source, variable),
        limits=replace(Limits(wall_timeout_s=20.0), **limits),
        workspace=workspace,
        session_id=session,
    )
