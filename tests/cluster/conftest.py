"""A real two-node Ray cluster, a real Redis and two `sandgate serve --ray` front ends."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.batch.conftest import RayCluster, ray_cluster  # noqa: F401  (the fixture)
from tests.front_ends import grants_yaml, mcp_client, serving_on_ray
from tests.redis_server import redis_url  # noqa: F401  (the fixture)
from tests.tenancy._server import START_TIMEOUT_S

GRANTS = ("alice", "bob", "carol", "dave", "erin")
SESSIONS_MAX = 16
"""`server.max_sessions_per_grant`: above what any other test keeps of one grant (alice, about
12), so only the cap test (erin) reaches it."""
COUNTED_MAX = 10
"""`run_python_code` calls one grant may make an hour (the exact-counters test)."""
RUNS_MAX = 1000
"""`run_code` calls one grant may make an hour (high: the test reads the counter)."""


def cluster_policy(redis: str, stream: str) -> str:
    """Five grants (`SESSIONS_MAX` sessions each), `run_code` (persistent), the snapshot
    tools, a rate-limited `run_python_code` and `save_to_file_and_run` (a client's human
    approves each call), on wasm, with counters, approvals, MCP sessions and the audit in
    `redis`."""
    return (
        "version: '1'\ndefault: deny\n"
        f"{grants_yaml(GRANTS)}"
        "all_tools:\n  engine: wasm\n  state: persistent\n"
        "quotas:\n  timeout_s: 60\n  memory_mb: 256\n"
        f"state:\n  backend: redis\n  url: '{redis}'\n"
        f"audit:\n  sink: redis\n  stream: '{stream}'\n"
        f"server:\n  http_sessions: redis\n  max_sessions_per_grant: {SESSIONS_MAX}\n"
        "approvals:\n  by: client\n"
        "tools:\n"
        "  run_code:\n    limits:\n"
        f"      - {{counter: runs, window: hour, max: {RUNS_MAX}, scope: grant}}\n"
        "  snapshot_session: {}\n  restore_session: {}\n  fork_session: {}\n"
        "  save_to_file_and_run: {action: require_approval, reason: every save is reviewed}\n"
        "  run_python_code:\n    limits:\n"
        f"      - {{counter: counted, window: hour, max: {COUNTED_MAX}, scope: grant}}\n"
    )


@dataclass
class FrontEnd:
    """One `sandgate serve --ray` process."""

    url: str
    process: subprocess.Popen[bytes]

    @asynccontextmanager
    async def client(self, grant: str) -> AsyncIterator[Client]:
        async with mcp_client(self.url, grant) as client:
            yield client


@dataclass
class Deployment:
    """The cluster, Redis, the policy and the front ends serving it."""

    cluster: RayCluster
    redis_url: str
    policy: Path
    stream: str
    front_ends: list[FrontEnd] = field(default_factory=list)
    node_names: dict[str, str] = field(default_factory=dict)
    """Ray node id → `head` or `second`."""


def _node_names(cluster: RayCluster) -> dict[str, str]:
    """Which Ray node id is the head and which the second node (by their temp folders)."""
    script = (
        "import json, ray\n"
        f"ray.init(address={cluster.address!r}, log_to_driver=False)\n"
        "print(json.dumps([[n['NodeID'], n['RayletSocketName']] for n in ray.nodes()"
        " if n['Alive']]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )
    pairs: list[list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    head = str(cluster.root / "head")
    return {node: ("head" if socket.startswith(head) else "second") for node, socket in pairs}


@pytest.fixture(scope="module")
def deployment(
    ray_cluster: RayCluster,  # noqa: F811
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """Two front ends on the two-node cluster (one WASM worker per node), stopped at the end."""
    folder = tmp_path_factory.mktemp("cluster")
    stream = f"test-cluster-audit-{uuid.uuid4().hex[:8]}"
    policy = folder / "policy.yaml"
    policy.write_text(cluster_policy(redis_url, stream))
    found = Deployment(ray_cluster, redis_url, policy, stream)
    found.node_names = _node_names(ray_cluster)
    assert sorted(found.node_names.values()) == ["head", "second"], found.node_names
    with ExitStack() as stack:
        for _ in range(2):
            url, process = stack.enter_context(
                serving_on_ray(policy, folder / "state", ray_cluster)
            )
            found.front_ends.append(FrontEnd(url, process))
        yield found


def text_of(result: Any) -> str:
    """The text blocks of a tool result and its structured stdout and stderr, joined."""
    text = "".join(getattr(block, "text", "") for block in result.content)
    structured = result.structured_content or {}
    return text + str(structured.get("stdout", "")) + str(structured.get("stderr", ""))
