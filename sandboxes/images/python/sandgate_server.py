"""sandgate's interpreter server: one request in a pre-started container, or a session's requests.

Started as the container's main process (`python3 -I /opt/sandgate/server.py`, PID 1). Stdlib
only; the user's program is run by `sandgate_program.run_program` (beside this file, shared
with the wasm engine's guest). It forks its child ahead of time (forks are slow under gVisor),
announces itself with a hello frame on stdout; the child reads the one JSON request line on
stdin and becomes the user's program, its stdout/stderr pipes forwarded by the server as
frames; once the child ends the server kills every other process left in the container, sends
one report frame and exits. The host enforces every limit on its own (container kill,
cgroups); what this server reports is what the sandbox says of itself.

Persistent mode (protocol 3): when the first request says `persistent`, the child serves the
session's requests one after another, each run as `__main__` in one module whose globals
persist, and writes each report as a line; the server sends an `R` frame per run (`kept`:
true) and waits for the next request. After each run it kills every other process the run
left, as after a fresh run; output the child's threads write between runs is dropped. When
the child dies (a limit, a crash), that run's report says `kept`: false and the server exits
as after a fresh run. Each run's CPU-time and file-size limits are the child's soft limits,
set per run (its hard limits cannot rise again); the server kills it a second past its CPU
time, as the hard limit does in a fresh run.

Egress: in a container the host made for egress runs (only those have the proxy's Unix socket
at `EGRESS_SOCKET`) a thread relays 127.0.0.1:`EGRESS_PORT` to it (`sandgate_egress`); each
run's lease (its proxy variables and credentials) comes in its request's `environment`, set for
that run only.

Frames on stdout: 1 tag byte, 4-byte big-endian length, payload. Tags: `H` hello (JSON),
`O` user stdout bytes, `E` user stderr bytes, `R` a run's report (JSON).
"""

import contextlib
import json
import linecache  # noqa: F401  (imported before the fork so the child starts warm)
import os
import resource
import runpy  # noqa: F401
import selectors
import signal
import struct
import sys
import threading
import time
import traceback  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # `-I` leaves the script's folder off sys.path; the runner is beside it
import sandgate_egress  # noqa: E402
import sandgate_program  # noqa: E402

sys.path.remove(HERE)  # the user's program does not see the server's folder

PROTOCOL = 3
SITE = "/site"
STDIN_FILE = "/tmp/.sandgate-stdin"
MAX_REPORT_BYTES = 8 * 1024 * 1024
MAX_REQUEST_BYTES = 256 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
BACKSTOP_GRACE_S = 5.0
"""Seconds past the request's deadline before the server kills the program itself (the host
kills the whole container at the deadline; this only matters when the host is gone)."""
PR_SET_DUMPABLE = 4
EGRESS_SOCKET = "/run/sandgate/egress.sock"
EGRESS_PORT = 3128
"""Where the host lends an egress run's container the proxy's Unix socket (only such
containers have it), and the loopback port the forwarder relays to it (`sandboxes/container/
_spec.py` says the same)."""
NEXT_REQUESTS = 4
"""The persistent child's fd for the requests after its first: the server reads the host's
request channel itself and forwards each line here, after continuing the stopped child."""
_HEADER = struct.Struct(">cI")


def _send(tag, payload):
    data = _HEADER.pack(tag, len(payload)) + payload
    while data:
        data = data[os.write(1, data) :]


def _read_counter(paths, key):
    """The value of `key` in the first readable cgroup flat-keyed file of `paths`, else None."""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        return int(parts[1])
        except (OSError, ValueError):
            continue
    return None


def _pids_refused():
    return _read_counter(("/sys/fs/cgroup/pids/pids.events", "/sys/fs/cgroup/pids.events"), "max")


def _set_dumpable(flag):
    """Non-dumpable: the program (same uid) cannot ptrace this server or open its /proc fds."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, flag, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _oom_kills():
    return _read_counter(
        ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"), "oom_kill"
    )


# ---- the child: runs the user's program --------------------------------------------------------


def _is_server_file(name):
    """Whether a traceback frame is the server's or the runner's (left out of what users see)."""
    return name in (__file__, sandgate_program.__file__, sandgate_egress.__file__)


def _take_lease(request):
    """Give the run its egress lease (proxy variables with this run's credentials, the CA,
    brokered placeholders: the request's `environment`) and make proxy refusals raise
    `PermissionError`; what the variables were before, for `_drop_lease`."""
    environment = request.get("environment") or {}
    previous = {name: os.environ.get(name) for name in environment}
    if environment:
        os.environ.update(environment)
        sandgate_egress.install()
        sandgate_egress.forget_proxies()
    return previous


def _drop_lease(previous):
    """After a persistent run: the session keeps no run's credentials for the next."""
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if previous:
        sandgate_egress.forget_proxies()


def _read_request(fd=0):
    """The one request line from `fd` (stdin), read without buffering past it."""
    chunks = []
    size = 0
    while True:
        chunk = os.read(fd, CHUNK_BYTES)
        if not chunk:
            return None
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or size > MAX_REQUEST_BYTES:
            return json.loads(b"".join(chunks))


def _child(out_w, err_w, rep_w, next_r):
    """The pre-forked child: waits for the request, then becomes the user's program."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(rep_w, 3)
    os.dup2(next_r, NEXT_REQUESTS, inheritable=False)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > NEXT_REQUESTS:
            with contextlib.suppress(OSError):
                os.close(fd)
    request = _read_request()
    if request is None:  # the host went away before asking anything
        os._exit(0)
    if request.get("persistent"):
        _serve_requests(request)
    os.close(NEXT_REQUESTS)
    _take_lease(request)
    accepted = {k: request.get(k) for k in ("output_bytes", "deadline_s")}
    os.write(3, json.dumps(accepted).encode("utf-8") + b"\n")
    with open(STDIN_FILE, "wb") as f:
        f.write(request.get("stdin", "").encode("utf-8", "surrogateescape"))
    stdin_fd = os.open(STDIN_FILE, os.O_RDONLY)
    os.dup2(stdin_fd, 0)
    os.close(stdin_fd)
    _set_dumpable(1)
    sys.stdout.reconfigure(line_buffering=True)
    nproc = request.get("nproc")
    if nproc:
        # Inside gVisor RLIMIT_NPROC counts this sandbox's tasks only (runc: the pids cgroup).
        resource.setrlimit(resource.RLIMIT_NPROC, (int(nproc), int(nproc)))
    cpu_s = request.get("cpu_s")
    if cpu_s:
        seconds = max(1, int(cpu_s + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    fsize = request.get("fsize_bytes")
    if fsize is not None:
        # No file may grow past what is left of the workspace budget (Python ignores SIGXFSZ,
        # so the write fails with EFBIG).
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(fsize), int(fsize)))
    me = os.getpid()
    report = sandgate_program.run_program(
        request["kind"],
        request["source"],
        request.get("variable") or "",
        _is_server_file,
        (SITE,),
        final_expression=bool(request.get("final_expression")),
    )
    if os.getpid() != me:  # a process the program forked ran off the end: no report from it
        os._exit(report["exit_code"] & 0xFF if report["exit_code"] else 0)
    data = json.dumps(report).encode("utf-8")[:MAX_REPORT_BYTES]
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(3, data) :]
    os._exit(report["exit_code"] & 0xFF if report["exit_code"] else 0)


def _serve_requests(request):
    """Persistent mode (the first request said `persistent`): this child serves request after
    request, each run as `__main__` in one module whose globals persist, and writes each
    report as one line; it ends only when it is killed or the host goes away. The processes a
    run started are killed by the server after it; the program reaps them (`Popen.wait`) as
    it would any other, so a process it never waits for stays a zombie of the interpreter."""
    requests = NEXT_REQUESTS  # the server forwards each next request here (not inheritable)
    main = type(sys)("__main__")
    encoding, errors = sys.stdin.encoding, sys.stdin.errors
    _set_dumpable(1)
    me = os.getpid()
    while request is not None:
        accepted = {k: request.get(k) for k in ("output_bytes", "deadline_s", "cpu_s")}
        os.write(3, json.dumps({**accepted, "persistent": True}).encode("utf-8") + b"\n")
        with open(STDIN_FILE, "wb") as f:
            f.write(request.get("stdin", "").encode("utf-8", "surrogateescape"))
        stdin_fd = os.open(STDIN_FILE, os.O_RDONLY)
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
        sys.stdin = open(0, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # undo a previous run's rebinding
        sys.stdout.reconfigure(line_buffering=True)
        _persistent_limits(request)
        lease = _take_lease(request)
        report = sandgate_program.run_program(
            request["kind"],
            request["source"],
            request.get("variable") or "",
            _is_server_file,
            (SITE,),
            final_expression=bool(request.get("final_expression")),
            namespace=main,
        )
        _drop_lease(lease)
        if os.getpid() != me:  # a process the program forked ran off the end: no report from it
            os._exit(report["exit_code"] & 0xFF if report["exit_code"] else 0)
        data = json.dumps(report).encode("utf-8")[:MAX_REPORT_BYTES] + b"\n"
        while data:
            data = data[os.write(3, data) :]
        request = _read_request(requests)
    os._exit(0)


def _persistent_limits(request):
    """A persistent run's own limits. Only soft limits can change from run to run (a lowered
    hard limit never rises again): the CPU limit counts from what the interpreter has used so
    far (the server kills it a second past, as the hard limit does in a fresh run); a file may
    not grow past what is left of the workspace budget, nor ever past the budget itself (the
    hard limit, fixed by the first run: a run with another budget gets another container)."""
    nproc = request.get("nproc")
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (int(nproc), int(nproc)))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu_s = request.get("cpu_s")
    cpu_soft = cpu_hard
    if cpu_s:
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_soft = max(1, int(used.ru_utime + used.ru_stime + cpu_s + 0.999))
        if cpu_hard != resource.RLIM_INFINITY:
            cpu_soft = min(cpu_soft, cpu_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
    fsize, hard = request.get("fsize_bytes"), request.get("fsize_hard_bytes")
    if fsize is not None:
        _, fsize_hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if hard is not None and (fsize_hard == resource.RLIM_INFINITY or int(hard) < fsize_hard):
            fsize_hard = int(hard)
        soft = int(fsize) if fsize_hard == resource.RLIM_INFINITY else min(int(fsize), fsize_hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, fsize_hard))


# ---- the parent: forwards output, reaps, reports ----------------------------------------------


def _kill_leftovers():
    """Kill whatever the program left running: every other process of this PID namespace.

    Only as PID 1, i.e. the init of the container's own PID namespace: anywhere else
    `kill(-1)` would reach every process the user may signal on the host.
    """
    if os.getpid() != 1:
        return
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)
    _until_dead(_others(()))


def _serve():
    """Fork the child ahead of the request, say hello, then forward its output and report."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    next_r, next_w = os.pipe()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    refused_before, ooms_before = _pids_refused(), _oom_kills()
    pid = os.fork()
    if pid == 0:
        try:
            _child(out_w, err_w, rep_w, next_r)
        finally:
            os._exit(70)
    for fd in (out_w, err_w, rep_w, next_r):
        os.close(fd)
    if os.path.exists(EGRESS_SOCKET):  # an egress run's container: relay to the proxy
        sandgate_egress.serve_forwarder(EGRESS_SOCKET, EGRESS_PORT)
    waiting = os.dup(0)  # a persistent child's later requests come through the server
    os.close(0)  # the child alone reads the first request
    hello = {"protocol": PROTOCOL, "python": sys.version.split()[0], "uid": os.getuid()}
    _send(b"H", json.dumps(hello).encode("utf-8"))
    accepted = None
    began = backstop = None
    sent = {b"O": 0, b"E": 0}
    truncated = []
    report = bytearray()
    status = usage = None
    selector = selectors.DefaultSelector()
    for fd, tag in ((out_r, b"O"), (err_r, b"E"), (rep_r, b"R"), (wake_r, b"W")):
        selector.register(fd, selectors.EVENT_READ, tag)
    open_pipes = 3
    while open_pipes or status is None:
        if status is None and backstop is not None and time.perf_counter() > backstop:
            os.kill(pid, signal.SIGKILL)
        for key, _ in selector.select(timeout=1.0):
            tag = key.data
            chunk = os.read(key.fd, CHUNK_BYTES)
            cap = int((accepted or {}).get("output_bytes") or 0)
            if tag == b"W":
                continue
            if not chunk:
                selector.unregister(key.fd)
                open_pipes -= 1
            elif tag == b"R":
                report += chunk[: MAX_REPORT_BYTES - len(report)]
                if accepted is None and b"\n" in report:
                    line, _, rest = bytes(report).partition(b"\n")
                    accepted, report = json.loads(line), bytearray(rest)
                    if accepted.get("persistent"):
                        return _serve_persistent(pid, selector, accepted, report, waiting, next_w)
                    began = time.perf_counter()
                    backstop = began + float(accepted.get("deadline_s") or 3600)
                    backstop += BACKSTOP_GRACE_S
            elif cap and sent[tag] + len(chunk) > cap:
                _send(tag, chunk[: cap - sent[tag]])
                sent[tag] = cap
                if tag not in truncated:
                    truncated.append(tag)
                    if status is None:
                        os.kill(pid, signal.SIGKILL)
            else:
                _send(tag, chunk)
                sent[tag] += len(chunk)
        if status is None:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == 0:
                status = None
            else:
                _kill_leftovers()
    if accepted is None:
        os._exit(0)  # no request came (the host went away): nothing to report
    wall_ms = (time.perf_counter() - began) * 1000
    refused_after, ooms_after = _pids_refused(), _oom_kills()
    try:
        parsed = json.loads(report) if report else None
    except ValueError:
        parsed = None
    return {
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "report": parsed if isinstance(parsed, dict) else None,
        "truncated": ["stdout" if t == b"O" else "stderr" for t in truncated],
        "wall_ms": wall_ms,
        "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
        "peak_memory_bytes": usage.ru_maxrss * 1024,
        "pids_refused": None
        if refused_before is None or refused_after is None
        else refused_after - refused_before,
        "oom_kills": None
        if ooms_before is None or ooms_after is None
        else ooms_after - ooms_before,
    }


# ---- persistent mode: one child serves the session's runs --------------------------------------


class _Run:
    """One run of a persistent child, from its accepted line to its report."""

    def __init__(self, pid, accepted):
        self.pid = pid
        self.cap = int(accepted.get("output_bytes") or 0)
        self.began = time.perf_counter()
        self.backstop = self.began + float(accepted.get("deadline_s") or 3600) + BACKSTOP_GRACE_S
        cpu_s = accepted.get("cpu_s")
        self.cpu_at_start = _cpu_ticks(pid)
        self.cpu_backstop = None
        if cpu_s and self.cpu_at_start is not None:
            self.cpu_backstop = self.cpu_at_start + (float(cpu_s) + 1) * _TICKS
        self.cpu_killed = False
        self.refused_before, self.ooms_before = _pids_refused(), _oom_kills()
        self.sent = {b"O": 0, b"E": 0}
        self.truncated = []

    def forward(self, tag, chunk):
        """Send the program's output within the cap; the cap passed kills the program."""
        cap = self.cap
        if cap and self.sent[tag] + len(chunk) > cap:
            _send(tag, chunk[: cap - self.sent[tag]])
            self.sent[tag] = cap
            if tag not in self.truncated:
                self.truncated.append(tag)
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
        else:
            _send(tag, chunk)
            self.sent[tag] += len(chunk)

    def watch(self):
        """Kill the program past its deadline (the backstop) or its CPU time."""
        over_cpu = self.cpu_backstop is not None and (_cpu_ticks(self.pid) or 0) > self.cpu_backstop
        if over_cpu:
            self.cpu_killed = True
        if over_cpu or time.perf_counter() > self.backstop:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def answer(self, report, status=None, usage=None):
        """The run's report frame: `kept` when the child lives on for the next request."""
        refused_after, ooms_after = _pids_refused(), _oom_kills()
        if status is None:
            exit_code = (report or {}).get("exit_code")
            exit_code = exit_code & 0xFF if isinstance(exit_code, int) else (1 if exit_code else 0)
            killed_by = None
            ticks = _cpu_ticks(self.pid)
            cpu_ms = None if ticks is None else (ticks - (self.cpu_at_start or 0)) * 1000 / _TICKS
            peak = _peak_rss(self.pid)
        else:
            exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
            peak = usage.ru_maxrss * 1024
        if self.cpu_killed:
            killed_by = signal.SIGXCPU
        return {
            "exit_code": exit_code,
            "signal": killed_by,
            "report": report if isinstance(report, dict) else None,
            "truncated": ["stdout" if t == b"O" else "stderr" for t in self.truncated],
            "wall_ms": (time.perf_counter() - self.began) * 1000,
            "cpu_ms": cpu_ms,
            "peak_memory_bytes": peak,
            "pids_refused": None
            if self.refused_before is None or refused_after is None
            else refused_after - self.refused_before,
            "oom_kills": None
            if self.ooms_before is None or ooms_after is None
            else ooms_after - self.ooms_before,
            "kept": status is None,
        }


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid):
    """CPU clock ticks process `pid` and its reaped children used so far, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rfind(b")") + 2 :].split()
        return sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss(pid):
    """The most memory process `pid` has held (bytes), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _kill_others(keep):
    """After a persistent run: kill every process of this PID namespace but the server and
    the child (`keep`), as `_kill_leftovers` does after a fresh run (only as PID 1)."""
    if os.getpid() != 1:
        return
    others = _others((keep,))
    for pid in others:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _until_dead(others)


KILLED_WAIT_S = 5.0
"""How long the server waits for killed processes to be dead (a write a process was making
when it was killed still completes): the host gives the session's files back on the answer."""


def _others(keep):
    """The processes of this PID namespace but the server (PID 1) and `keep`."""
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in (1, *keep)]


def _until_dead(pids):
    """Wait (at most `KILLED_WAIT_S`) until each of the SIGKILLed `pids` is gone or a zombie,
    reaping those that are the server's children: a killed process has made its last write."""
    deadline = time.monotonic() + KILLED_WAIT_S
    left = list(pids)
    while left and time.monotonic() < deadline:
        still = []
        for pid in left:
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    state = stat.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue  # gone
            if state == b"Z":
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                continue
            still.append(pid)
        left = still
        if left:
            time.sleep(0.005)


def _drain(fd):
    """What is waiting in the (non-blocking) pipe `fd`, and whether it reached its end."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def _pumped(source):
    """A pipe fed from `source` (the request channel) by a thread's blocking reads, for the
    selector: gVisor restores a checkpointed container with new host stdio whose readiness
    epoll no longer reports (a read still works), and the sandbox may be saved and resumed
    between any two runs (the host's `save_state`). A pipe inside the sandbox always works."""
    read_end, write_end = os.pipe()

    def pump():
        while True:
            try:
                data = os.read(source, CHUNK_BYTES)
            except OSError:
                data = b""
            if not data:
                os.close(write_end)
                return
            while data:
                data = data[os.write(write_end, data) :]

    threading.Thread(target=pump, name="requests", daemon=True).start()
    return read_end


def _serve_persistent(pid, selector, accepted, pending, waiting, forward_to):
    """Persistent mode, once the child accepted its first request: forward each run's output,
    send each run's report (`kept`) and wait for the next; when the child ends, return its
    last run's answer (the caller sends it and the server exits, as after a fresh run).

    Between runs the child is stopped (SIGSTOP): threads the program left running use no CPU
    and write nothing (through a file still open into the session folder, say) while no run
    is watched. The server reads the host's next request itself (`waiting`, the request
    channel) and only then continues the child (SIGCONT) and hands it the line
    (`forward_to`): the child never reads the channel while a stop is pending, so a stop
    cannot take effect after it consumed a request (which would leave it stopped with nobody
    to wake it). Whatever the child writes after that belongs to the next run, even output
    read before the run's accepted line (select returns the pipes in no particular order)."""
    fds = {key.data: key.fd for key in selector.get_map().values()}
    for tag in (b"O", b"E"):
        os.set_blocking(fds[tag], False)
    waiting = _pumped(waiting)
    run = _Run(pid, accepted)
    early = []  # output read before its run's accepted line (one select round sees both)
    open_pipes, status, usage, last = 3, None, None, None
    while open_pipes or status is None:
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending = bytearray(rest)
            if run is None:
                run = _Run(pid, json.loads(line))
                for tag, chunk in early:  # the child is stopped between runs: it is this run's
                    run.forward(tag, chunk)
                early.clear()
                continue
            for tag in (b"O", b"E"):  # written before the report: forward it first
                chunk, _ = _drain(fds[tag])
                if chunk:
                    run.forward(tag, chunk)
            _kill_others(pid)
            report = json.loads(line)
            if status is None:  # stopped before the report: the host may answer at once
                status, usage = _stop(pid)
            selector.register(waiting, selectors.EVENT_READ, b"I")
            _send(b"R", json.dumps(run.answer(report)).encode("utf-8"))
            run = None
        if run is not None and status is None:
            run.watch()
        for key, _ in selector.select(timeout=0.1 if run is not None else 1.0):
            tag = key.data
            if tag == b"I":  # the next request (or the host's end): go on, and hand it over
                data = os.read(waiting, CHUNK_BYTES)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                if not data or data.endswith(b"\n"):
                    selector.unregister(waiting)
                if not data:  # the host went away: the child reads the end and exits
                    os.close(forward_to)
                with contextlib.suppress(OSError):  # the child died: its end is reported
                    while data:
                        data = data[os.write(forward_to, data) :]
                continue
            try:
                chunk = os.read(key.fd, CHUNK_BYTES)
            except BlockingIOError:
                continue
            if tag == b"W":
                continue
            if not chunk:
                selector.unregister(key.fd)
                open_pipes -= 1
            elif tag == b"R":
                pending += chunk[: MAX_REPORT_BYTES - len(pending)]
            elif run is not None:
                run.forward(tag, chunk)
            elif sum(len(c) for _, c in early) < MAX_REPORT_BYTES:
                early.append((tag, chunk))
        if status is None:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == 0:
                status = None
            else:
                _kill_leftovers()
    if run is None:
        os._exit(0)  # it ended between runs: no run to report on
    with contextlib.suppress(ValueError):
        last = json.loads(pending) if pending else None
    return run.answer(last, status, usage)


def _stop(pid):
    """Stop the child and wait until every one of its threads has stopped: `kill` returns
    before a thread running on another CPU has taken the stop, and a write it was making would
    land after the host had the report. Returns (None, None), or the status and usage of a
    child that died instead (it is reaped here)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    try:
        _, status, usage = os.wait4(pid, os.WUNTRACED)
    except ChildProcessError:
        return None, None
    if os.WIFSTOPPED(status):
        return None, None
    _kill_leftovers()
    return status, usage


def main():
    _set_dumpable(0)
    try:
        answer = _serve()
    except Exception as exc:  # the one boundary: a server failure becomes a report
        answer = {"server_error": f"{type(exc).__name__}: {exc}"}
    _send(b"R", json.dumps(answer).encode("utf-8"))
    os._exit(0)


if __name__ == "__main__":
    main()
