// sandgate's Pyodide host: runs under Deno with read access to the Pyodide assets only.
//
//   deno run [no net/env/run/ffi/sys/write] host.mjs snapshot <assets> <guest.py> <out>
//   deno run [no net/env/run/ffi/sys/write] host.mjs serve <assets> <snapshot> [open]
//   deno run [no net/env/run/ffi/sys/write] host.mjs resume <assets> <saved folder> [open]
//
// `snapshot` boots Pyodide, runs the guest harness and writes a memory snapshot (the one run
// that may write, to that one file). `serve` boots from the snapshot, closes the JS bridge
// (unless `open`, used only by tests of the permission layer) and then answers one JSON
// request per stdin line with `TOKEN {json}` on stdout; TOKEN is the first stdin line, kept in
// this closure only, so nothing user code prints can pass for an answer. `resume` does the
// same from a session's interpreter saved by the `save` request (`heap.bin`: a Pyodide memory
// snapshot of it; `files.json`: what it kept in the in-memory file system and its folder).

// Primordials, captured before any user code can replace them.
const D = Deno;
const encoder = new TextEncoder();
const encode = encoder.encode.bind(encoder);
const decoder = new TextDecoder();
const decode = decoder.decode.bind(decoder);
const stringify = JSON.stringify;
const parse = JSON.parse;
const now = performance.now.bind(performance);
const stdinRead = D.stdin.read.bind(D.stdin);
const stdinReadSync = D.stdin.readSync.bind(D.stdin);
const stdoutWrite = D.stdout.writeSync.bind(D.stdout);
const stderrWrite = D.stderr.writeSync.bind(D.stderr);
const exit = D.exit;
const realGrow = WebAssembly.Memory.prototype.grow;
const apply = Reflect.apply;
const concat = (chunks, total) => {
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
};

const [mode, assets, snapshotPath, flag] = D.args;
const resuming = mode === "resume";

// Wasm memory cap: growth past it fails, and Python raises MemoryError.
let memoryCap = Infinity;
let memoryBytes = 0;
WebAssembly.Memory.prototype.grow = function (pages) {
  const next = this.buffer.byteLength + pages * 65536;
  if (next > memoryCap) throw new RangeError("sandgate: wasm memory cap reached");
  const old = apply(realGrow, this, [pages]);
  memoryBytes = Math.max(memoryBytes, this.buffer.byteLength);
  return old;
};

function writeAll(write, bytes) {
  let at = 0;
  while (at < bytes.length) at += write(bytes.subarray(at));
}

// The guest's environment (fixed when the snapshot is made): nothing of the host's.
const GUEST_ENV = { HOME: "/home/pyodide", LANG: "C.UTF-8", MPLBACKEND: "Agg", _: "/usr/bin/python3" };

const { loadPyodide } = await import(new URL("file://" + assets + "/pyodide.mjs").href);

if (mode === "snapshot") {
  const guest = decode(D.readFileSync(snapshotPath));
  const py = await loadPyodide({ indexURL: assets + "/", _makeSnapshot: true, env: GUEST_ENV });
  py.runPython(guest, { filename: "<sandgate>" });
  D.writeFileSync(flag, py.makeMemorySnapshot());
  exit(0);
}

// serve, resume
const began = now();
const saved = resuming ? parse(decode(D.readFileSync(snapshotPath + "/files.json"))) : null;
const py = await loadPyodide({
  indexURL: assets + "/",
  _loadSnapshot: D.readFileSync(resuming ? snapshotPath + "/heap.bin" : snapshotPath),
  _makeSnapshot: true, // lets `save` snapshot the interpreter later (it changes nothing else)
  jsglobals: Object.create(null),
  env: GUEST_ENV,
});
const pyApi = py._api;
const pyModule = py._module;

// Output: kept up to the run's cap and streamed to the host as it comes: a write goes out at
// once unless another did less than STREAM_FLUSH_MS ago (then with the next one, or at the
// end), so a run stopped at its deadline still shows what it printed, but for its last 50 ms.
const STREAM_FLUSH_MS = 50;
const STREAM_FLUSH_BYTES = 64 * 1024;
let token = null;
const send = (obj) => writeAll(stdoutWrite, encode(token + " " + stringify(obj) + "\n"));
class Capture {
  constructor(name) {
    this.name = name;
    this.decoder = new TextDecoder();
    this.decodeChunk = this.decoder.decode.bind(this.decoder);
    this.reset(0);
  }
  reset(cap) {
    this.cap = cap; this.pending = []; this.pendingBytes = 0; this.kept = 0; this.seen = 0;
    this.cut = false; // the run passed the cap: said at once, so a run stopped later shows it
    this.lastFlush = -Infinity; // a run's first write goes out at once
  }
  write(buffer) {
    this.seen += buffer.length;
    const room = this.cap - this.kept;
    if (room > 0) {
      const part = buffer.length <= room ? buffer.slice() : buffer.slice(0, room);
      this.pending.push(part);
      this.pendingBytes += part.length;
      this.kept += part.length;
      if (this.pendingBytes >= STREAM_FLUSH_BYTES || now() - this.lastFlush >= STREAM_FLUSH_MS) {
        this.flush(true);
      }
    }
    if (this.seen > this.kept && !this.cut) {
      this.cut = true;
      this.flush(true);
    }
    return buffer.length;
  }
  flush(more) {
    const bytes = concat(this.pending, this.pendingBytes);
    this.pending = []; this.pendingBytes = 0; this.lastFlush = now();
    const data = this.decodeChunk(bytes, { stream: more });
    if (data || this.cut) send({ stream: this.name, data, cut: this.cut });
  }
}
const out = new Capture("stdout");
const err = new Capture("stderr");
py.setStdout({ write: (b) => out.write(b), isatty: false });
py.setStderr({ write: (b) => err.write(b), isatty: false });
py.setStdin({ error: true });
const guestModule = py.pyimport("_sandgate");
guestModule.seal(true);
// Touch, while the runtime is whole, the lazily loaded parts Pyodide needs later (node:crypto
// for os.urandom, the clock, the time zone): once `Deno` is gone they could not load.
guestModule.warm();
const handle = guestModule.handle;

// Close the JS side: keep the language, timers and pure Web APIs; drop every global that
// reaches the host (Deno, process, fetch, sockets, workers, storage, stdin prompts...).
const KEEP = new Set([
  "Object", "Function", "Array", "Number", "parseFloat", "parseInt", "Infinity", "NaN",
  "undefined", "Boolean", "String", "Symbol", "Date", "Promise", "RegExp", "Error",
  "AggregateError", "EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError",
  "URIError", "globalThis", "JSON", "Math", "Intl", "ArrayBuffer", "Atomics", "Uint8Array",
  "Int8Array", "Uint16Array", "Int16Array", "Uint32Array", "Int32Array", "BigUint64Array",
  "BigInt64Array", "Uint8ClampedArray", "Float32Array", "Float64Array", "Float16Array",
  "DataView", "Map", "BigInt", "Set", "Iterator", "WeakMap", "WeakSet", "Proxy", "Reflect",
  "FinalizationRegistry", "WeakRef", "decodeURI", "decodeURIComponent", "encodeURI",
  "encodeURIComponent", "escape", "unescape", "eval", "isFinite", "isNaN", "console",
  "queueMicrotask", "AbortController", "AbortSignal", "DOMException", "Event", "EventTarget",
  "ErrorEvent", "PromiseRejectionEvent", "TextDecoder", "TextEncoder", "URL",
  "URLSearchParams", "atob", "btoa", "clearInterval", "clearTimeout", "setInterval",
  "setTimeout", "setImmediate", "clearImmediate", "crypto", "Crypto", "performance",
  "Performance", "structuredClone", "reportError", "WebAssembly", "SharedArrayBuffer",
  "Temporal", "SuppressedError", "DisposableStack", "AsyncDisposableStack", "self",
  "onerror", "onunhandledrejection",
]);
if (flag !== "open") {
  globalThis.addEventListener("error", (e) => e.preventDefault());
  globalThis.addEventListener("unhandledrejection", (e) => e.preventDefault());
  const quiet = Object.create(null);
  for (const k of Object.keys(console)) {
    quiet[k] = (...a) => writeAll(stderrWrite, encode(a.map(String).join(" ") + "\n"));
  }
  globalThis.console = quiet;
  for (const key of Reflect.ownKeys(globalThis)) {
    if (typeof key === "string" && KEEP.has(key)) continue;
    try { delete globalThis[key]; } catch { /* non-configurable: left as is */ }
  }
}

// Files: the host copies the workspace and the operator mounts in (`mount`, `put`, `delete`)
// and changed files out (`get`) through Emscripten's in-memory FS; file data lives in JS
// arrays, not in Python's heap.
const FS = py.FS;
const fromBase64 = Uint8Array.fromBase64;
const toBase64 = (bytes) => bytes.toBase64();
// Folders the host copies into; of those, the ones whose changes it fetches back, and the
// read-only ones (the installed packages and operator mounts: code may not change them).
const ROOTS = new Set(["/workspace", "/site"]);
const FETCHED = new Set(["/workspace"]);
const READ_ONLY = new Set(["/site"]);
const MOUNT_ROOT = /^\/mnt\/[A-Za-z0-9_-]{1,64}$/;
const EROFS = 69;
function target(root, rel) {
  if (!ROOTS.has(root) || typeof rel !== "string" || rel.startsWith("/")) return null;
  const parts = rel.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0 || parts.includes("..") || rel.includes("\0")) return null;
  return root + "/" + parts.join("/");
}
function lstatFile(path) {
  try { const st = FS.lstat(path); return FS.isFile(st.mode) ? st : null; } catch { return null; }
}

// Read-only folders (`/site`, `/mnt` and read-only mounts): their nodes lose every write
// permission bit, and their node operations refuse, to anything but the host's own copying,
// what could change them or give the bits back (chmod, utime, create, rename, unlink, rmdir,
// symlink).
let hostWriting = false;
const sealedOps = new Map();
const MUTATORS = ["setattr", "mknod", "rename", "unlink", "rmdir", "symlink"];
function sealedOpsOf(ops) {
  let sealed = sealedOps.get(ops);
  if (!sealed) {
    sealed = { ...ops };
    for (const name of MUTATORS) {
      const original = ops[name];
      if (typeof original !== "function") continue;
      sealed[name] = (...args) => {
        if (!hostWriting) throw new FS.ErrnoError(EROFS);
        return apply(original, ops, args);
      };
    }
    sealedOps.set(ops, sealed);
    sealedOps.set(sealed, sealed);
  }
  return sealed;
}
function seal(path) {
  const node = FS.lookupPath(path, { follow: false }).node;
  node.mode &= ~0o222;
  node.node_ops = sealedOpsOf(node.node_ops);
}
function sealTree(root, path) {
  // Every folder from `root` down to `path`, and `path` itself.
  let at = root;
  seal(at);
  for (const part of path.slice(root.length + 1).split("/")) {
    at += "/" + part;
    seal(at);
  }
}
const asCode = (action) => action();
function asHost(action) {
  const ignored = FS.ignorePermissions;
  hostWriting = true;
  FS.ignorePermissions = true;
  try { return action(); } finally { hostWriting = false; FS.ignorePermissions = ignored; }
}
// The read-only folders at the top (`/site`, `/mnt`) sit in `/`, which stays writable. The
// folder operations (one table shared by every in-memory folder, so a move from any of them
// is covered) refuse, to code, removing, renaming, replacing or creating these names in `/`:
// code could otherwise put a writable folder of its own where the host copies files.
const PINNED = new Set(["site", "mnt"]);
function pinTopFolders() {
  const top = FS.lookupPath("/", { follow: false }).node;
  const ops = top.node_ops;
  const refuse = (dir, name) => {
    if (dir === top && !hostWriting && PINNED.has(name)) throw new FS.ErrnoError(EROFS);
  };
  const checks = {
    rename: (node, dir, name) => { refuse(node.parent, node.name); refuse(dir, name); },
    mknod: (parent, name) => refuse(parent, name),
    rmdir: (parent, name) => refuse(parent, name),
    unlink: (parent, name) => refuse(parent, name),
    symlink: (parent, name) => refuse(parent, name),
  };
  for (const [name, check] of Object.entries(checks)) {
    const original = ops[name];
    if (typeof original !== "function") continue;
    ops[name] = (...args) => { check(...args); return apply(original, ops, args); };
  }
}
asHost(() => {
  pinTopFolders();
  FS.mkdirTree("/site");
  seal("/site"); // the host copies installed packages in; code only imports them
});

// The interpreter's own files: what code made, changed or removed in the in-memory file
// system outside the folders the host copies (`/workspace`, `/site`, `/mnt`) and the devices,
// against what it held once booted. A saved interpreter keeps them (with its working folder)
// in `files.json`; a resumed one gets them back before any code runs.
const NOT_KEPT = ["/dev", "/proc", "/workspace", "/site", "/mnt"];
const kept = (path) =>
  typeof path === "string" && path.startsWith("/") && !path.includes("\0") &&
  !NOT_KEPT.some((root) => path === root || path.startsWith(root + "/"));
function walkFiles(visit) {
  const folders = ["/"];
  while (folders.length) {
    const folder = folders.pop();
    let names;
    try { names = FS.readdir(folder); } catch { continue; }
    for (const name of names) {
      if (name === "." || name === "..") continue;
      const path = (folder === "/" ? "" : folder) + "/" + name;
      if (!kept(path)) continue;
      let st;
      try { st = FS.lstat(path); } catch { continue; }
      visit(path, st);
      if (FS.isDir(st.mode)) folders.push(path);
    }
  }
}
const signature = (st) => `${st.ino}:${st.mode}:${st.size}:${st.mtime.getTime()}`;
const bootFiles = new Map();
walkFiles((path, st) => bootFiles.set(path, signature(st)));
const bootStreams = new Set();
FS.streams.forEach((stream, fd) => { if (stream) bootStreams.add(fd); });
function fileState() {
  const entries = [];
  const seen = new Set();
  walkFiles((path, st) => {
    seen.add(path);
    if (bootFiles.get(path) === signature(st)) return;
    const entry = { path, mode: st.mode, mtime: st.mtime.getTime() };
    if (FS.isLink(st.mode)) entry.target = FS.readlink(path);
    else if (FS.isFile(st.mode)) entry.data = toBase64(FS.readFile(path));
    else if (!FS.isDir(st.mode)) return; // devices, pipes, sockets: not kept
    entries.push(entry);
  });
  const removed = [...bootFiles.keys()].filter((path) => !seen.has(path));
  return { cwd: FS.cwd(), entries, removed };
}
function restoreFiles(state) {
  // As code, not as host: the seals of `/site` and `/mnt` hold for what a saved file says.
  for (const path of [...(state.removed || [])].reverse()) {
    if (!kept(path)) continue;
    try { FS.isDir(FS.lstat(path).mode) ? FS.rmdir(path) : FS.unlink(path); } catch { /* gone */ }
  }
  const folders = [];
  for (const entry of state.entries || []) {
    if (!kept(entry.path)) continue;
    try {
      const parent = entry.path.slice(0, entry.path.lastIndexOf("/"));
      if (parent) FS.mkdirTree(parent);
      if (FS.isDir(entry.mode)) { FS.mkdirTree(entry.path); folders.push(entry); continue; }
      try { FS.unlink(entry.path); } catch { /* absent */ }
      if (FS.isLink(entry.mode)) { FS.symlink(String(entry.target), entry.path); continue; }
      FS.writeFile(entry.path, fromBase64(String(entry.data)));
      FS.chmod(entry.path, entry.mode & 0o7777);
      FS.utime(entry.path, entry.mtime, entry.mtime);
    } catch { /* what cannot be put back is left out */ }
  }
  for (const entry of folders.reverse()) {
    try { FS.chmod(entry.path, entry.mode & 0o7777); FS.utime(entry.path, entry.mtime, entry.mtime); } catch { /* gone */ }
  }
  FS.mkdirTree("/workspace");
  const cwd = typeof state.cwd === "string" && state.cwd.startsWith("/") ? state.cwd : "/workspace";
  if (cwd.startsWith("/workspace/")) { try { FS.mkdirTree(cwd); } catch { /* a file in the way */ } }
  try { FS.chdir(cwd); } catch { FS.chdir("/workspace"); }
}
if (saved !== null) restoreFiles(saved);

// Saving: a Pyodide memory snapshot of the live interpreter (`heap.bin`, the format
// `loadPyodide({_loadSnapshot})` reads) and its files (`files.json`), sent raw after the
// answer line. Written here rather than by `makeMemorySnapshot`, which copies the whole heap
// once more and insists on Pyodide's own JS-bridge slots that `seal()` released (a resume puts
// those back anyway). Refused, with why, when the interpreter could not come back as it is:
// open files, pending asyncio tasks, JS objects Python code holds.
const SNAPSHOT_MAGIC = 1886286592;
const SNAPSHOT_HEADER_BYTES = 48;
function snapshotHeader() {
  const expected = pyApi.getExpectedKeys();
  const was = expected.map((_, i) => pyModule.__hiwire_get(i));
  let hiwire;
  try {
    expected.forEach((value, i) => { if (was[i] !== value) pyModule.__hiwire_set(i, value); });
    hiwire = encode(stringify(pyApi.serializeHiwireState()));
  } finally {
    expected.forEach((value, i) => { if (was[i] !== value) pyModule.__hiwire_set(i, was[i]); });
  }
  const size = Math.ceil((SNAPSHOT_HEADER_BYTES + hiwire.length) / 16) * 16;
  const header = new Uint8Array(size);
  const words = new Uint32Array(header.buffer, 0, 12);
  words[0] = SNAPSHOT_MAGIC;
  words[1] = size;
  words[2] = hiwire.length;
  const id = pyApi.config.BUILD_ID;
  for (let i = 0; i < 8; i++) words[4 + i] = parseInt(id.slice(i * 8, (i + 1) * 8), 16);
  header.set(hiwire, SNAPSHOT_HEADER_BYTES);
  return header;
}
function save() {
  const open = [];
  FS.streams.forEach((stream, fd) => {
    if (stream && !bootStreams.has(fd)) open.push(`${stream.path} (fd ${fd})`);
  });
  if (open.length) {
    return send({ refused: `files are open (${open.slice(0, 5).join(", ")}): an open file ` +
      "cannot be resumed; close them before saving" });
  }
  const why = guestModule.before_save();
  if (why) return send({ refused: String(why) });
  try {
    let header;
    try {
      header = snapshotHeader();
    } catch (e) {
      return send({ refused: "Python code holds JavaScript objects, which live outside the " +
        `interpreter's memory (${String(e && e.message).slice(0, 200)})` });
    }
    const heap = new Uint8Array(pyModule.HEAP8.buffer);
    const files = encode(stringify(fileState()));
    send({ saved: true, heap_bytes: header.length + heap.length, files_bytes: files.length });
    writeAll(stdoutWrite, header);
    writeAll(stdoutWrite, heap);
    writeAll(stdoutWrite, files);
  } finally {
    guestModule.after_save();
  }
}
function mount(request) {
  const root = request.root;
  if (typeof root !== "string" || !MOUNT_ROOT.test(root) || ROOTS.has(root)) return;
  const readOnly = request.read_only !== false;
  asHost(() => {
    FS.mkdirTree(root);
    seal("/mnt"); // code may not rename, replace or add mounts
    if (readOnly) seal(root);
  });
  ROOTS.add(root);
  (readOnly ? READ_ONLY : FETCHED).add(root);
}
function put(request) {
  const path = target(request.root, request.path);
  if (path === null) return;
  const readOnly = READ_ONLY.has(request.root);
  (readOnly ? asHost : asCode)(() => {
    try {
      FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
      let existing = null;
      try { existing = FS.lstat(path); } catch { /* absent */ }
      if (existing && FS.isLink(existing.mode)) FS.unlink(path); // never write through a link
      FS.writeFile(path, fromBase64(request.data));
      FS.utime(path, 0, 0);
      if (readOnly) sealTree(request.root, path);
    } catch { /* a folder in the way: the guest keeps its own */ }
  });
}
function remove(request) {
  (READ_ONLY.has(request.root) ? asHost : asCode)(() => {
    for (const rel of request.paths || []) {
      const path = target(request.root, rel);
      if (path !== null && lstatFile(path)) { try { FS.unlink(path); } catch { /* gone */ } }
    }
  });
}
function get(request) {
  const root = request.root ?? "/workspace";
  const path = FETCHED.has(root) ? target(root, request.path) : null;
  if (path === null || !lstatFile(path)) return { data: null };
  const data = toBase64(FS.readFile(path));
  FS.utime(path, 0, 0);
  return { data };
}

// The protocol.
let rest = new Uint8Array(0);
let pieces = [];
let piecesLength = 0;
// The next whole line of what was read so far, or undefined (then all of it is kept for later).
function takeLine() {
  const nl = rest.indexOf(10);
  if (nl < 0) {
    if (rest.length) { pieces.push(rest); piecesLength += rest.length; }
    rest = new Uint8Array(0);
    return undefined;
  }
  const head = rest.subarray(0, nl);
  const whole = piecesLength ? concat([...pieces, head], piecesLength + head.length) : head;
  pieces = [];
  piecesLength = 0;
  rest = rest.subarray(nl + 1);
  return decode(whole);
}
async function nextLine() {
  while (true) {
    const line = takeLine();
    if (line !== undefined) return line;
    const chunk = new Uint8Array(1 << 20);
    const n = await stdinRead(chunk);
    if (n === null) return null;
    rest = chunk.subarray(0, n);
  }
}
// The same, blocking: a line the host sends while a run waits for it (an egress answer).
function nextLineSync() {
  while (true) {
    const line = takeLine();
    if (line !== undefined) return line;
    const chunk = new Uint8Array(1 << 20);
    const n = stdinReadSync(chunk);
    if (n === null) exit(0);
    rest = chunk.subarray(0, n);
  }
}

// Egress: a run whose request says `egress` gets this door (as `handle`'s second argument):
// the guest's HTTP client sends a frame (base64 text) to the host, which performs the request
// through the run's egress proxy and answers on stdin, while the guest waits. Deno itself
// reaches nothing; outside such a run the door answers nothing.
let egressOpen = false;
function egressDoor(frame) {
  if (!egressOpen || typeof frame !== "string") return "";
  out.flush(true);
  err.flush(true);
  send({ egress: frame });
  return nextLineSync();
}

token = await nextLine();
send({ ready: true, load_ms: now() - began });

async function run(line, request) {
  out.reset(request.output_bytes);
  err.reset(request.output_bytes);
  memoryCap = request.memory_bytes;
  const t0 = now();
  let report;
  egressOpen = request.egress === true;
  try {
    let result = egressOpen ? handle(line, egressDoor) : handle(line);
    if (typeof result !== "string") result = await result;
    report = parse(result);
  } catch (e) {
    report = { exit_code: 1, error: "sandgate host: " + String(e).slice(0, 2000), fatal: true };
  } finally {
    egressOpen = false;
  }
  report.wall_ms = now() - t0;
  out.flush(false);
  err.flush(false);
  report.truncated = [];
  if (out.seen > out.kept) report.truncated.push("stdout");
  if (err.seen > err.kept) report.truncated.push("stderr");
  report.wasm_memory_bytes = memoryBytes;
  return report;
}

while (true) {
  const line = await nextLine();
  if (line === null) exit(0);
  const request = parse(line);
  if (request.op === "put") put(request);
  else if (request.op === "mount") mount(request);
  else if (request.op === "delete") remove(request);
  else if (request.op === "get") send(get(request));
  else if (request.op === "save") save();
  else if (request.op === "run") {
    const report = await run(line, request);
    send(report);
    if (report.fatal) exit(3); // the interpreter may be broken: the session starts afresh
  }
}
