"""Distribute a batch over a Ray cluster: an actor per node, results streamed as they finish,
and the jobs of a lost node run again elsewhere."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._errors import BatchError, NodeSetupError, RayUnavailable
from ._jobs import Job
from ._node import SETUP_ERROR_KEY, NodeRunner, NodeSpec
from ._results import JobResult

WAIT_S = 1.0
"""Longest the driver waits for a result before it looks at the cluster again."""
NODES_EVERY_S = 5.0
"""How often the driver looks for nodes that joined."""
NO_NODE_WAIT_S = 60.0
"""How long the driver waits for a live node before it gives up."""
MAX_LOSSES = 3
"""Times a job may be lost with its node before its result is `infra_error`."""
MAX_ACTOR_DEATHS = 3
"""Actor deaths on one live node before the driver stops placing actors there."""
CLOSE_TIMEOUT_S = 30.0
NAMESPACE = "sandgate-batch"


@dataclass(frozen=True, slots=True)
class RayStats:
    """What the cluster did: results it sent back, jobs re-run after a loss, nodes and actors."""

    runs: int
    retried: int
    nodes: int
    actors: int


@dataclass(slots=True)
class _Actor:
    node: str
    handle: Any
    inflight: int = 0
    alive: bool = True


@dataclass(slots=True)
class _Driver:
    ray: Any
    spec: NodeSpec
    per_node: int
    emit: Callable[[JobResult], None]
    say: Callable[[str], None]
    actors: dict[str, _Actor] = field(default_factory=dict)
    deaths: Counter[str] = field(default_factory=Counter)
    losses: Counter[str] = field(default_factory=Counter)
    inflight: dict[Any, tuple[Job, _Actor]] = field(default_factory=dict)
    retry: deque[Job] = field(default_factory=deque)
    nodes_seen: set[str] = field(default_factory=set)
    runs: int = 0
    retried: int = 0
    created: int = 0
    looked_at: float = 0.0

    def run(self, items: Iterator[Job | JobResult]) -> RayStats:
        remote = self.ray.remote(NodeRunner)
        exhausted = False
        try:
            while True:
                self._place(remote)
                exhausted = self._fill(items, exhausted)
                if not self.inflight:
                    if exhausted and not self.retry:
                        break
                    continue
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=WAIT_S)
                if ready:
                    rest = [r for r in self.inflight if r not in ready]
                    more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
                    for ref in [*ready, *more]:
                        self._collect(ref)
        finally:
            self._close_all()
        return RayStats(self.runs, self.retried, len(self.nodes_seen), self.created)

    def _live_nodes(self) -> set[str]:
        return {
            n["NodeID"]
            for n in self.ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0
        }

    def _place(self, remote: Any) -> None:
        """Drop actors of dead nodes and place one on each live node that has none."""
        now = time.monotonic()
        if self.actors and now - self.looked_at < NODES_EVERY_S:
            return
        deadline = now + NO_NODE_WAIT_S
        while True:
            self.looked_at = time.monotonic()
            live = self._live_nodes()
            for node in [n for n in self.actors if n not in live]:
                self._drop(self.actors[node], "its node is no longer alive")
            for node in sorted(live - set(self.actors)):
                if self.deaths[node] < MAX_ACTOR_DEATHS:
                    self._create(remote, node)
            if self.actors:
                return
            if time.monotonic() >= deadline:
                raise BatchError(
                    f"no live Ray node with CPUs to run jobs on (waited {NO_NODE_WAIT_S:g} s); "
                    "start one with `ray start --address=…` and run the batch again to resume"
                )
            time.sleep(WAIT_S)

    def _create(self, remote: Any, node: str) -> None:
        strategies = importlib.import_module("ray.util.scheduling_strategies")
        handle = remote.options(
            num_cpus=0,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=self.per_node + 2,
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(self.spec)
        self.actors[node] = _Actor(node, handle)
        self.nodes_seen.add(node)
        self.created += 1

    def _drop(self, actor: _Actor, why: str) -> None:
        if not actor.alive:
            return
        actor.alive = False
        self.deaths[actor.node] += 1
        if self.actors.get(actor.node) is actor:
            del self.actors[actor.node]
        self.looked_at = 0.0  # look at the cluster again before the next submission
        self.say(f"sandgate batch: Ray node {actor.node[:12]} lost ({why}); re-running its jobs")
        self._kill(actor)

    def _next(self, items: Iterator[Job | JobResult], exhausted: bool) -> tuple[Job | None, bool]:
        if self.retry:
            return self.retry.popleft(), exhausted
        while not exhausted:
            item = next(items, None)
            if item is None:
                return None, True
            if isinstance(item, JobResult):
                self.emit(item)
                continue
            return item, False
        return None, True

    def _fill(self, items: Iterator[Job | JobResult], exhausted: bool) -> bool:
        """Submit jobs round-robin until every live actor has `per_node` in flight."""
        progressed = True
        while progressed:
            progressed = False
            for actor in list(self.actors.values()):
                if actor.inflight >= self.per_node:
                    continue
                job, exhausted = self._next(items, exhausted)
                if job is None:
                    return exhausted
                ref = actor.handle.run.remote(job.to_json())
                self.inflight[ref] = (job, actor)
                actor.inflight += 1
                progressed = True
        return exhausted

    def _collect(self, ref: Any) -> None:
        job, actor = self.inflight.pop(ref)
        actor.inflight -= 1
        errors = importlib.import_module("ray.exceptions")
        lost = (
            errors.RayActorError,
            errors.ActorUnschedulableError,
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.ObjectLostError,
        )
        try:
            payload = self.ray.get(ref)
        except lost as exc:
            self._drop(actor, type(exc).__name__)
            self._lost(job, exc)
            return
        except errors.RayTaskError as exc:
            raise BatchError(
                f"Ray node {actor.node[:12]} failed while running job {job.id!r} (a sandgate "
                f"bug; its traceback follows): {exc}"
            ) from exc
        if SETUP_ERROR_KEY in payload:
            raise NodeSetupError(actor.node, str(payload[SETUP_ERROR_KEY]))
        self.runs += 1
        self.emit(JobResult.from_json(payload))

    def _lost(self, job: Job, exc: BaseException) -> None:
        key = job.id
        self.losses[key] += 1
        if self.losses[key] >= MAX_LOSSES:
            self.emit(
                JobResult(
                    id=job.id,
                    status="infra_error",
                    line=job.line,
                    error=f"lost with its Ray node {self.losses[key]} times "
                    f"(last: {type(exc).__name__}); not run again",
                )
            )
            return
        self.retried += 1
        self.retry.append(job)

    def _close_all(self) -> None:
        actors = [a for a in self.actors.values() if a.alive]
        closing = [a.handle.close.remote() for a in actors]
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
        for actor in actors:
            self._kill(actor)
        self.actors.clear()

    def _kill(self, actor: _Actor) -> None:
        errors = importlib.import_module("ray.exceptions")
        with contextlib.suppress(errors.RayError, ValueError):  # gone already, with its node
            self.ray.kill(actor.handle, no_restart=True)


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayUnavailable(
            "a Ray address was given but the `ray` package is not installed: "
            "pip install 'sandgate[batch]' (or `pip install ray`) on the driver and every node"
        ) from exc


def run_on_ray(
    items: Iterator[Job | JobResult],
    *,
    address: str,
    spec: NodeSpec,
    per_node: int,
    emit: Callable[[JobResult], None],
    say: Callable[[str], None],
) -> RayStats:
    """Run every job of `items` on the Ray cluster at `address` (`auto`: the local one).

    Args:
        items: Jobs, and `invalid` results to pass straight to `emit`.
        address: The cluster (`host:port`, `ray://host:port` or `auto`).
        spec: How each node opens its service.
        per_node: Jobs in flight on each node at once.
        emit: Gets each result as it completes (called from this thread only).
        say: Gets a line for each event worth telling (a node lost, ...).

    Raises:
        RayUnavailable: Ray is not installed or the cluster cannot be reached.
        NodeSetupError: a node could not open its service.
        BatchError: no live node, or a node failed in sandgate's own code.
    """
    ray = _import_ray()
    owned = not ray.is_initialized()
    if owned:
        try:
            ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(
                f"cannot reach the Ray cluster at {address!r}: {exc}; start one with "
                "`ray start --head` or check the address"
            ) from exc
    try:
        return _Driver(ray, spec, per_node, emit, say).run(items)
    finally:
        if owned:
            ray.shutdown()
