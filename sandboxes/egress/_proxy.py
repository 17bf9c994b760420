"""`EgressProxy`: runs mitmdump with our addon, answers its questions, hands out leases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_hex, token_urlsafe
from typing import Any

from .._types import Egress
from ._errors import EgressUnavailable
from ._resolve import normal_host, resolve
from ._values import (
    DEFAULT_EGRESS_VENV,
    START_TIMEOUT_S,
    BrokeredSecret,
    Decide,
    EgressConnection,
    EgressUsage,
    EgressVerdict,
)

logger = logging.getLogger(__name__)

ADDON = Path(__file__).with_name("_addon.py")
FLUSH_TIMEOUT_S = 5.0


def egress_venv() -> Path:
    """mitmproxy's venv: `$SANDGATE_EGRESS_VENV` or `~/.cache/sandgate/egress-venv`."""
    return Path(os.environ.get("SANDGATE_EGRESS_VENV") or DEFAULT_EGRESS_VENV).expanduser()


@dataclass(slots=True)
class _Lease:
    credentials: str
    decide: Decide
    byte_budget: int | None
    max_connections: int | None
    quota_rule: str
    placeholders: dict[str, BrokeredSecret]
    connections: dict[tuple[str, str, int], EgressConnection] = field(default_factory=dict)
    failed: str | None = None

    def made(self) -> int:
        return sum(1 for c in self.connections.values() if c.allowed)


class EgressProxy:
    """The server's egress proxy: one mitmdump process (restarted for the next lease when it
    dies), a control socket it asks, and a Unix socket relayed to its port."""

    def __init__(
        self,
        state_dir: Path,
        *,
        hosts: Mapping[str, str] | None = None,
        upstream_ca: Path | None = None,
        venv: Path | None = None,
    ) -> None:
        self._dir = Path(state_dir) / "egress"
        self._hosts = {normal_host(k): v for k, v in (hosts or {}).items()}
        self._upstream_ca = upstream_ca
        self._venv = venv or egress_venv()
        self._leases: dict[str, _Lease] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._hello: asyncio.Future[tuple[str, int]] | None = None
        self._port: int | None = None
        self._addon: asyncio.StreamWriter | None = None
        self._flushes: dict[int, asyncio.Future[None]] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        self.restarts = 0

    @property
    def control_socket(self) -> Path:
        return self._dir / "control.sock"

    @property
    def socket(self) -> Path:
        return self._dir / "proxy.sock"

    @property
    def ca_certificate(self) -> Path:
        return self._dir / "mitmproxy" / "mitmproxy-ca-cert.pem"

    @property
    def pid(self) -> int | None:
        """The mitmdump process id while it runs."""
        alive = self._process is not None and self._process.returncode is None
        return self._process.pid if alive and self._process else None

    async def start(self) -> None:
        """Start the control and relay sockets and mitmdump; returns once it listens.

        Raises:
            EgressUnavailable: mitmproxy's venv is missing or mitmdump did not start.
        """
        if self._closed:
            raise EgressUnavailable("the egress proxy is closed (aclose); make a new one")
        mitmdump = self._venv / "bin" / "mitmdump"
        if not mitmdump.exists():
            raise EgressUnavailable(
                f"egress proxy: {mitmdump} not found; run `sandgate setup egress` (or set "
                "$SANDGATE_EGRESS_VENV to the venv that has mitmproxy)"
            )
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o700)
        if not self._servers:
            for path in (self.control_socket, self.socket):
                path.unlink(missing_ok=True)
            control = await asyncio.start_unix_server(
                self._serve_addon, path=self.control_socket, limit=1 << 24
            )
            self.control_socket.chmod(0o600)
            relay = await asyncio.start_unix_server(self._relay, path=self.socket)
            self.socket.chmod(0o666)  # engines bind-mount it; the credentials still decide
            self._servers = [control, relay]
        await self._spawn(mitmdump)

    async def _spawn(self, mitmdump: Path) -> None:
        confdir = self._dir / "mitmproxy"
        confdir.mkdir(mode=0o700, exist_ok=True)
        args = [
            str(mitmdump),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "-s",
            str(ADDON),
            "--set",
            f"confdir={confdir}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            "upstream_cert=false",
            "--set",
            "onboarding=false",
            "--set",
            "flow_detail=0",
            "--set",
            "termlog_verbosity=warn",
        ]
        if self._upstream_ca is not None:
            args += ["--set", f"ssl_verify_upstream_trusted_ca={self._upstream_ca}"]
        env = {**os.environ, "SANDGATE_EGRESS_CONTROL": str(self.control_socket)}
        self._hello = asyncio.get_running_loop().create_future()
        with (self._dir / "mitmdump.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self._process = process
        exited: asyncio.Future[Any] = asyncio.ensure_future(process.wait())
        hello: asyncio.Future[Any] = self._hello
        done, _ = await asyncio.wait(
            {hello, exited}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if hello not in done:
            exited.cancel()
            if process.returncode is None:
                process.kill()
                await process.wait()
            tail = (self._dir / "mitmdump.log").read_text(errors="replace")[-1500:]
            raise EgressUnavailable(
                f"egress proxy: mitmdump did not start within {START_TIMEOUT_S:.0f} s "
                f"(exit {process.returncode}); its log ends:\n{tail}"
            )
        exited.cancel()
        _host, self._port = self._hello.result()
        self._watch = asyncio.create_task(self._watch_process(process))

    async def _watch_process(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._closed or process is not self._process:
            return
        logger.warning("egress proxy: mitmdump exited (%s); live leases fail closed", code)
        self._port = None
        self._process = None
        for lease in self._leases.values():
            lease.failed = f"the egress proxy exited (code {code}) during the run"

    async def _ensure_running(self) -> None:
        async with self._lock:
            if self._port is not None and self.pid is not None and await self._answers():
                return
            process = self._process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            if process is not None:  # its leases fail closed before new ones are made
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), FLUSH_TIMEOUT_S)
                await self._watch_process(process)
            if self._servers:
                self.restarts += 1
            await self.start()

    async def _answers(self) -> bool:
        """Whether mitmdump still accepts connections (a killed one may not be reaped yet)."""
        assert self._port is not None
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self._port)
        except OSError:
            return False
        writer.close()
        return True

    async def lease(
        self,
        *,
        decide: Decide,
        byte_budget: int | None = None,
        max_connections: int | None = None,
        quota_rule: str = "",
        secrets: Sequence[BrokeredSecret] = (),
    ) -> Egress:
        """A lease for one run: the `Egress` an engine lends its guest. Starts (or restarts)
        mitmdump when it is not running.

        Args:
            decide: The run's policy for one destination (see `Decide`).
            byte_budget: Most bytes up and down together; the transfer that passes it is cut.
            max_connections: Most destinations (client connection and host:port) allowed.
            quota_rule: The policy pointer named when a quota refuses.
            secrets: Brokered secrets: the guest sees placeholders in `Egress.environment`.

        Raises:
            EgressUnavailable: The proxy cannot start.
        """
        await self._ensure_running()
        assert self._port is not None
        credentials = f"run-{token_hex(6)}:{token_urlsafe(18)}"
        placeholders = {f"sandgate-secret-{s.name}-{token_hex(12)}": s for s in secrets}
        self._leases[credentials] = _Lease(
            credentials=credentials,
            decide=decide,
            byte_budget=byte_budget,
            max_connections=max_connections,
            quota_rule=quota_rule,
            placeholders=placeholders,
        )
        return Egress(
            host="127.0.0.1",
            port=self._port,
            socket=self.socket,
            credentials=credentials,
            ca_certificate=self.ca_certificate,
            environment=tuple((s.variable, p) for p, s in placeholders.items()),
        )

    async def release(self, lease: Egress) -> EgressUsage:
        """End a lease: its credentials stop working, its open connections are closed, and
        what it used comes back (every connection, allowed or refused)."""
        held = self._leases.get(lease.credentials)
        if held is None:
            return EgressUsage(failed="the lease was already released")
        if self._addon is not None and held.failed is None and held.connections:
            ident = len(self._flushes) + id(held)
            flushed = asyncio.get_running_loop().create_future()
            self._flushes[ident] = flushed
            self._tell({"op": "flush", "credentials": lease.credentials, "ident": ident})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flushed, FLUSH_TIMEOUT_S)
            self._flushes.pop(ident, None)
        self._leases.pop(lease.credentials, None)
        return EgressUsage(connections=tuple(held.connections.values()), failed=held.failed)

    async def aclose(self) -> None:
        """Stop mitmdump and the sockets; live leases fail closed."""
        self._closed = True
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._watch is not None:
            self._watch.cancel()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        self._servers = []
        for path in (self.control_socket, self.socket):
            path.unlink(missing_ok=True)

    async def __aenter__(self) -> EgressProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # The control channel: mitmdump's addon asks, we answer.

    def _tell(self, message: dict[str, Any]) -> None:
        if self._addon is not None and not self._addon.is_closing():
            self._addon.write(json.dumps(message).encode() + b"\n")

    async def _serve_addon(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._addon = writer
        try:
            while line := await reader.readline():
                message = json.loads(line)
                op = message.get("op")
                if op == "hello" and self._hello is not None and not self._hello.done():
                    self._hello.set_result((message["host"], int(message["port"])))
                elif op == "decide":
                    answer = await self._decide(message)
                    self._tell({**answer, "re": message["id"]})
                elif op == "usage":
                    self._usage(message)
                elif "re_flush" in message:
                    flushed = self._flushes.get(message["re_flush"])
                    if flushed is not None and not flushed.done():
                        flushed.set_result(None)
        except (ConnectionError, json.JSONDecodeError, KeyError, ValueError) as exc:
            logger.warning("egress proxy: control channel dropped: %s", exc)
        finally:
            if self._addon is writer:
                self._addon = None
            writer.close()

    async def _decide(self, message: dict[str, Any]) -> dict[str, Any]:
        host, port = normal_host(str(message["host"])), int(message["port"])
        lease = self._leases.get(str(message["credentials"]))
        if lease is None:
            return _refused(
                f"egress to {host}:{port} refused", "unknown or released credentials", 407
            )
        key = (str(message["client"]), host, port)
        seen = lease.connections.get(key)
        if lease.failed is not None:
            return _refused(f"egress to {host}:{port} refused", lease.failed, 502)
        if seen is None:
            seen = await self._judge(lease, host, port)
            lease.connections[key] = seen
        if not seen.allowed:
            verdict = EgressVerdict(False, seen.rule, seen.reason)
            return _refused(verdict.refusal(host, port), seen.reason)
        quota = EgressVerdict(False, lease.quota_rule, "egress byte quota exhausted")
        return {
            "allowed": True,
            "address": seen.address,
            "budget": lease.byte_budget,
            "quota_refusal": quota.refusal(host, port),
            "placeholders": {
                p: EgressVerdict(False, s.rule, "").refusal(host, port)
                for p, s in lease.placeholders.items()
            },
            "substitute": {
                p: s.value for p, s in lease.placeholders.items() if s.may_send(host, port)
            },
        }

    async def _judge(self, lease: _Lease, host: str, port: int) -> EgressConnection:
        verdict = lease.decide(host, port, None)
        address = None
        if verdict.allowed:
            address = await resolve(host, port, self._hosts)
            if address is None:
                verdict = EgressVerdict(False, verdict.rule, f"{host} does not resolve")
            else:
                verdict = lease.decide(host, port, address)
        limit = lease.max_connections
        if verdict.allowed and limit is not None and lease.made() >= limit:
            verdict = EgressVerdict(
                False,
                lease.quota_rule,
                f"connection quota exhausted ({lease.max_connections} per call)",
            )
        return EgressConnection(host, port, address, verdict.allowed, verdict.rule, verdict.reason)

    def _usage(self, message: dict[str, Any]) -> None:
        lease = self._leases.get(str(message["credentials"]))
        if lease is None:
            return
        key = (str(message["client"]), normal_host(str(message["host"])), int(message["port"]))
        seen = lease.connections.get(key)
        if seen is not None:
            lease.connections[key] = replace(
                seen,
                bytes_up=seen.bytes_up + int(message["up"]),
                bytes_down=seen.bytes_down + int(message["down"]),
                cut=seen.cut or bool(message["cut"]),
            )

    # The Unix socket engines lend: relayed to mitmdump's port.

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self._port
        try:
            if port is None:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                if task is not None:
                    self._tasks.discard(task)
        finally:
            writer.close()


def _refused(text: str, reason: str, status: int = 403) -> dict[str, Any]:
    return {"allowed": False, "refusal": text, "reason": reason, "status": status}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def mitmdump_path(venv: Path | None = None) -> Path | None:
    """mitmdump of the egress venv when it is installed there."""
    found = (venv or egress_venv()) / "bin" / "mitmdump"
    return found if found.exists() else None
