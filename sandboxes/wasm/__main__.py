"""`python -m sandboxes.wasm`: a worker process of the `wasm` engine (see `_worker`).

The worker's own module is imported, never run as `__main__`: the package imports it too,
and running it would load a second copy with its own state."""

from ._worker import main

main()
