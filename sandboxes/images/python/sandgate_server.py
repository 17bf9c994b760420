"""sandgate's interpreter server: runs exactly one request in a pre-started, single-use container.

Started as the container's main process (`python3 -I /opt/sandgate/server.py`, PID 1). Stdlib
only; the user's program is run by `sandgate_program.run_program` (beside this file, shared
with the wasm engine's guest). It forks its child ahead of time (forks are slow under gVisor),
announces itself with a hello frame on stdout; the child reads the one JSON request line on
stdin and becomes the user's program, its stdout/stderr pipes forwarded by the server as
frames; once the child ends the server kills every other process left in the container, sends
one report frame and exits. The host enforces every limit on its own (container kill,
cgroups); what this server reports is what the sandbox says of itself.

Frames on stdout: 1 tag byte, 4-byte big-endian length, payload. Tags: `H` hello (JSON),
`O` user stdout bytes, `E` user stderr bytes, `R` the final report (JSON).
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
import time
import traceback  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # `-I` leaves the script's folder off sys.path; the runner is beside it
import sandgate_program  # noqa: E402

sys.path.remove(HERE)  # the user's program does not see the server's folder

PROTOCOL = 2
SITE = "/site"
STDIN_FILE = "/tmp/.sandgate-stdin"
MAX_REPORT_BYTES = 8 * 1024 * 1024
MAX_REQUEST_BYTES = 256 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
BACKSTOP_GRACE_S = 5.0
"""Seconds past the request's deadline before the server kills the program itself (the host
kills the whole container at the deadline; this only matters when the host is gone)."""
PR_SET_DUMPABLE = 4
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
    return name in (__file__, sandgate_program.__file__)


def _read_request():
    """The one request line from stdin, read without buffering past it."""
    chunks = []
    size = 0
    while True:
        chunk = os.read(0, CHUNK_BYTES)
        if not chunk:
            return None
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or size > MAX_REQUEST_BYTES:
            return json.loads(b"".join(chunks))


def _child(out_w, err_w, rep_w):
    """The pre-forked child: waits for the request, then becomes the user's program."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(rep_w, 3)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 3:
            with contextlib.suppress(OSError):
                os.close(fd)
    request = _read_request()
    if request is None:  # the host went away before asking anything
        os._exit(0)
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


def _serve():
    """Fork the child ahead of the request, say hello, then forward its output and report."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    refused_before, ooms_before = _pids_refused(), _oom_kills()
    pid = os.fork()
    if pid == 0:
        try:
            _child(out_w, err_w, rep_w)
        finally:
            os._exit(70)
    for fd in (out_w, err_w, rep_w):
        os.close(fd)
    os.close(0)  # the child alone reads the request
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
