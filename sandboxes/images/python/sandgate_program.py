"""sandgate's guest-side program runner: runs one user program as `__main__` in /workspace and
says how it ended, as a report (a JSON-able dict).

Shared by both guests that run Python: the container engine's interpreter server
(`sandgate_server.py`, beside this file in the image) imports it; the wasm engine puts this text
ahead of its own harness (`sandboxes/wasm/_harness.py`). Stdlib only, for CPython 3.11 (the
image) to 3.15 (the wasm guest). It imports as little as it can: every import costs a wasm guest
time (`traceback` alone ~60 ms), so the costly ones happen only on the error path. What it
reports is what the guest says of itself; the host enforces every limit on its own.
"""

import os
import sys

WORKSPACE = "/workspace"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
MAX_VALUE_CHARS = 1_000_000
NO_NETWORK = (
    "sandgate: this sandbox has no network (policy network: none): code cannot reach other "
    "hosts or resolve their names; read and write files in /workspace instead"
)
"""What every network attempt raises (the Pyodide guest says the same words)."""
LOOPBACK_HOSTS = ("localhost", "", "0.0.0.0", "::1", "::")


def run_program(
    kind, source, variable, is_harness_file, search_path=(), final_expression=False, namespace=None
):
    """Run the program (`kind` "code": `source` is its text; "file": its path), then report.

    Args:
        kind: "code" or "file".
        source: The code, or the path of the file to run.
        variable: A global whose `str()` the report carries as `value` ("" for none).
        is_harness_file: Whether a traceback frame's file name is the harness's own (its
            frames are left out of the traceback the program's stderr shows).
        search_path: Folders put on `sys.path` after /workspace (the session's packages).
        final_expression: As a REPL does: when code (not a file) ends in an expression
            statement, the report carries the `repr()` of its value as `value` (none when it
            is `None` or raised). `variable` wins when set.
        namespace: A module to run the program in as `__main__`, whose globals persist from
            call to call (a persistent session passes the same one each time; a file runs in
            it too). None: a fresh `__main__` for this call alone.

    Returns:
        The report: `exit_code`, `error` and `error_type` (an uncaught exception), `errno`,
        `value_found` and `value`, `figures` (matplotlib figures left open, saved as PNG) or
        `figures_error`.
    """
    me = os.getpid()
    if sys.platform != "wasi" or os.getcwd() != WORKSPACE:
        # A WASI guest's working folder is a name its libc keeps (`getcwd` asks no host), and
        # /workspace is a preopen: a guest already there (opened at rest after `_ready`) would
        # only pay two host file calls, each handed to a wasmtime thread, to be told so again.
        os.chdir(WORKSPACE)
    refuse_network()
    watch_image_writes()
    fresh = namespace is None
    sys.path[:0] = [p for p in (WORKSPACE, *search_path) if fresh or p not in sys.path]
    main = type(sys)("__main__") if fresh else namespace
    sys.modules["__main__"] = main
    report = {"error": None, "error_type": None, "exit_code": 0, "value_found": False}
    namespace = main.__dict__
    last = None
    try:
        if kind == "code":
            sys.argv = ["-c"]
            if final_expression and not variable:
                body, final = _split_final_expression(source)
                exec(body, namespace)
                if final is not None:
                    last = eval(final, namespace)
            else:
                exec(compile(source, "<code>", "exec"), namespace)
        elif not fresh:
            sys.argv = [source]
            with open(source, "rb") as f:
                code = compile(f.read(), source, "exec")
            namespace.update(__file__=source)
            exec(code, namespace)
        else:
            import runpy

            sys.argv = [source]
            namespace = runpy.run_path(source, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            report["exit_code"] = 0
        elif isinstance(code, int):
            report["exit_code"] = code
        else:
            print(code, file=sys.stderr)
            report["exit_code"] = 1
    except BaseException as exc:
        import linecache

        traceback = _import_traceback()
        if kind == "code":
            linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
        shown = traceback.TracebackException.from_exception(exc)
        no_network = _is_no_network(exc)
        stdlib = os.path.dirname(os.__file__) + os.sep
        shown.stack = traceback.StackSummary.from_list(
            [
                frame
                for frame in traceback.extract_tb(exc.__traceback__)
                if not is_harness_file(frame.filename)
                and "runpy" not in frame.filename
                and not (no_network and _is_library_file(frame.filename, stdlib))
            ]
        )
        if no_network:  # the user's frames and one line: not the library's or the chain
            shown.__cause__ = shown.__context__ = None
        sys.stderr.write("".join(shown.format()))
        report["error"] = error_line(exc, traceback.format_exception_only(type(exc), exc))
        report["error_type"] = type(exc).__name__
        report["errno"] = getattr(exc, "errno", None)
        report["exit_code"] = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    # The same rule as the Pyodide guest: a value only from a run that ended well.
    value = namespace.get(variable) if variable else last
    if value is not None and report["exit_code"] == 0:
        try:
            text = str(value) if variable else repr(value)
        except BaseException as exc:
            text = f"<could not format the value: {type(exc).__name__}>"
        report["value_found"] = True
        report["value"] = text[:MAX_VALUE_CHARS]
    try:  # a process the program forked that ran off its end saves no figure
        report["figures"] = save_open_figures() if os.getpid() == me else []
    except BaseException as exc:
        report["figures_error"] = f"{type(exc).__name__}: {exc}"
    if not fresh and "matplotlib.pyplot" in sys.modules:  # saved: the next call opens anew
        import contextlib  # matplotlib has imported it already

        with contextlib.suppress(BaseException):
            sys.modules["matplotlib.pyplot"].close("all")
    return report


def _import_traceback():
    """`traceback`, with the modules it imports at its top loaded only when it uses them, where
    the interpreter can (PEP 810's lazy imports, Python 3.15): a wasm guest's first `import
    traceback` costs ~49 ms of imports from the stdlib zip (`pathlib`, `codeop`, `warnings`,
    ...), ~19 ms this way. Elsewhere it is imported as usual. The lazy-import mode is back to
    what it was before this returns, so no code of the program runs under it."""
    lazy = getattr(sys, "set_lazy_imports", None)
    if lazy is None or "traceback" in sys.modules:
        import traceback

        return traceback
    mode = sys.get_lazy_imports()
    lazy("all")
    try:
        import traceback
    finally:
        lazy(mode)
    return traceback


def error_line(exc, lines):
    """The `Type: message` line of an exception (a SyntaxError's too, without the lines that
    show where), the same rule as the Pyodide guest's."""
    lines = [line.strip() for line in lines]
    name = type(exc).__name__
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head == name or head.endswith("." + name):
            return line
    return lines[-1] if lines else name


def _split_final_expression(source):
    """The code's body, compiled, and its trailing expression statement compiled on its own
    ("eval"; `None` when the code does not end in one). Both keep the code's line numbers, so
    a traceback names the lines the user wrote. `_ast` (built in) rather than `ast`, which
    costs the container's child ~8 ms of imports (`enum`, `contextlib`, …); compiling to a
    tree with the builtin `compile` also keeps `ast.py` frames out of a SyntaxError's
    traceback."""
    import _ast

    tree = compile(source, "<code>", "exec", _ast.PyCF_ONLY_AST)
    final = None
    if tree.body and isinstance(tree.body[-1], _ast.Expr):
        final = compile(_ast.Expression(tree.body.pop().value), "<code>", "eval")
    return compile(tree, "<code>", "exec"), final


def save_open_figures():
    """Save the matplotlib figures left open as /workspace/figure_N.png, unless the program
    wrote an image itself in this run (`watch_image_writes`); the paths saved."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None or _IMAGES_WRITTEN:
        return []
    saved = []
    for number in pyplot.get_fignums():
        path = os.path.join(WORKSPACE, f"figure_{number}.png")
        pyplot.figure(number).savefig(path)
        saved.append(path)
    return saved


_IMAGES_WRITTEN = []
"""The image files the program opened for writing during the current run."""
_WRITE_ACCESS = (os.O_WRONLY, os.O_RDWR)
"""The access modes (`flags & O_ACCMODE`) that write. Not a bit test: WASI's `O_RDWR` is
`O_RDONLY | O_WRONLY`, so a read-only open has a bit of `O_RDWR` set."""
_WRITE_FLAGS = os.O_CREAT | os.O_TRUNC | os.O_APPEND
"""Flags that change a file whatever the access mode."""
_WRITE_MODES = frozenset("wax+")
"""An `open` mode with any of these characters writes."""


def watch_image_writes():
    """Start noting the image files the program opens for writing, for this run: by identity
    of the act (an audit hook on every `open`), not by looking at files afterwards, so an
    image from an earlier run, however recent, is never taken for this run's, and no walk of
    the workspace is paid (it may hold a million files). The hook is added once per
    interpreter (audit hooks cannot be removed) and costs a suffix check per `open`."""
    _IMAGES_WRITTEN.clear()
    if getattr(sys, "_sandgate_watches_images", False):
        return

    def hook(event, args):
        if event != "open" or not args:
            return
        path = args[0]
        mode = args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 else None
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str) or not path.lower().endswith(IMAGE_SUFFIXES):
            return
        writes = (isinstance(mode, str) and not _WRITE_MODES.isdisjoint(mode)) or (
            isinstance(flags, int)
            and (flags & os.O_ACCMODE in _WRITE_ACCESS or flags & _WRITE_FLAGS)
        )
        if writes:
            _IMAGES_WRITTEN.append(path)

    sys.addaudithook(hook)
    sys._sandgate_watches_images = True


def refuse_network():
    """Make every network attempt raise one clear error (`NO_NETWORK`) instead of whatever the
    platform says (a resolver failure, a missing `_socket.getaddrinfo` on WASI): name lookups
    and connections to other hosts raise it; loopback stays as the platform has it. Patched in
    `_socket` (no `import socket`), so the `socket` module made from it inherits the refusal; a
    `socket` module already imported is patched too. A `_socket` not imported yet is not
    imported here (that costs a wasm guest ~1.1M instructions, a third of its harness's work
    for a call): `REFUSE_WHEN_IMPORTED`, first on `sys.meta_path`, patches it as it is
    imported, before any code can use it. Idempotent."""
    _socket = sys.modules.get("_socket")
    if _socket is not None:
        _refuse(_socket, sys.modules.get("socket"))
    elif REFUSE_WHEN_IMPORTED not in sys.meta_path:
        sys.meta_path.insert(0, REFUSE_WHEN_IMPORTED)


def _find_socket_spec(name, path=None, target=None):
    """`REFUSE_WHEN_IMPORTED.find_spec`: `_socket`'s spec as the finders after it give it, to
    be loaded by `REFUSE_WHEN_IMPORTED` with the loader they named; None for any other name."""
    if name != "_socket":
        return None
    for finder in sys.meta_path:
        find = None if finder is REFUSE_WHEN_IMPORTED else getattr(finder, "find_spec", None)
        spec = None if find is None else find(name, path, target)
        if spec is not None:
            if spec.loader is not None:
                REFUSE_WHEN_IMPORTED.loader, spec.loader = spec.loader, REFUSE_WHEN_IMPORTED
            return spec
    return None


def _create_socket_module(spec):
    return REFUSE_WHEN_IMPORTED.loader.create_module(spec)


def _exec_socket_module(module):
    """Load `_socket` with its own loader (which it keeps as `__loader__` and
    `__spec__.loader`), then patch it (`socket` imports `_socket` first: it is made from it)."""
    module.__loader__ = module.__spec__.loader = loader = REFUSE_WHEN_IMPORTED.loader
    loader.exec_module(module)
    _refuse(module, None)


REFUSE_WHEN_IMPORTED = type(sys)("sandgate_refuse_when_imported")
"""The import finder, and loader, that patches `_socket` (`_refuse`) as it is imported; any
other module it leaves to the finders after it (one call per import of a module not imported
yet). It stays in place, so a `_socket` imported again (removed from `sys.modules`) is patched
too. A namespace of functions, not a class: making a class costs a wasm guest ~120K
instructions, in every interpreter that loads this text."""
REFUSE_WHEN_IMPORTED.find_spec = _find_socket_spec
REFUSE_WHEN_IMPORTED.create_module = _create_socket_module
REFUSE_WHEN_IMPORTED.exec_module = _exec_socket_module
REFUSE_WHEN_IMPORTED.loader = None  # the loader `_socket` was last found with


def _refuse(_socket, socket):
    """Patch `_socket`, and the `socket` module made from it if there is one, to refuse."""
    if getattr(_socket, "sandgate_refuses", False):
        return
    _socket.sandgate_refuses = True
    modules = [_socket] if socket is None else [_socket, socket]
    for module in modules:
        for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
            setattr(module, name, _refusing_lookup(getattr(module, name, None), _socket))
    _socket.socket = _socket.SocketType = _refusing_socket(_socket.socket, _socket)
    if socket is not None:
        cls = socket.socket
        base = _socket.socket
        for name in ("connect", "connect_ex", "sendto"):
            setattr(cls, name, getattr(base, name))


def _is_loopback(host):
    host = host if isinstance(host, str) else host.decode("ascii", "replace") if host else ""
    return host in LOOPBACK_HOSTS or host.startswith("127.") or host.lower() == "localhost."


def _refusing_lookup(original, _socket):
    def lookup(host, *args, **kwargs):
        if original is None or not (host is None or _is_loopback(host)):
            raise _socket.gaierror(NO_NETWORK)
        return original(host, *args, **kwargs)

    return lookup


def _refusing_socket(base, _socket):
    inet = (getattr(_socket, "AF_INET", None), getattr(_socket, "AF_INET6", None))

    def check(sock, address):
        remote = isinstance(address, tuple) and address and not _is_loopback(address[0])
        if remote and sock.family in inet:
            raise OSError(NO_NETWORK)

    class socket(base):
        __slots__ = ()

        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            try:
                base.__init__(self, family, type, proto, fileno)
            except OSError:  # WASI has no sockets: say why
                if fileno is None and (family == -1 or family in inet):
                    raise OSError(NO_NETWORK) from None
                raise

        def connect(self, address):
            check(self, address)
            return base.connect(self, address)

        def connect_ex(self, address):
            check(self, address)
            return base.connect_ex(self, address)

        def sendto(self, data, *rest):
            check(self, rest[-1] if rest else None)
            return base.sendto(self, data, *rest)

    socket.__module__ = "_socket"
    return socket


def _is_library_file(name, stdlib):
    """Whether a traceback frame is the standard library's, an installed package's (the
    image's, or the session's own under /site) or the guest's egress module (left out of a
    network refusal's traceback)."""
    return (
        name.startswith(stdlib)
        or "-packages" + os.sep in name
        or name.startswith("/site" + os.sep)
        or os.path.basename(name) == "sandgate_egress.py"
    )


def _is_no_network(exc):
    """Whether `exc` or an exception it was raised from is the sandbox's network refusal, or
    the egress proxy's (`sandgate_egress`)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "sandgate_refused", False):
            return True
        try:
            if NO_NETWORK in str(exc):
                return True
        except BaseException:
            pass
        exc = exc.__cause__ or exc.__context__
    return False
