"""Which modules of the forwarding path are compiled, and whether the compiled ones match their sources.

Profiles of `pgbench -S -c 100` showed the interpreter, not the kernel, taking most of the router's
CPU time per transaction (benchmarks/RESULTS.md). So the modules every forwarded message passes
through are compiled with mypyc: the same typed Python source, turned into a C extension by
`python setup.py build_ext --inplace` (setup.sh runs it). Everything else stays interpreted, and
without a build every module runs as plain Python, with the same behaviour.

A compiled module sits next to its source and shadows it (the import system tries extension
modules first), so an edit to the source would silently not run. The build therefore records each
source's SHA-256 in `native.json`, and `refuse_stale()`, called when the package is imported,
fails loudly when a compiled module's source has changed since.

Must not import anything from the router: setup.py loads this file on its own, before the package
can be imported.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

# The forwarding path: framing and messages, the client and server connections, their flow control
# (linked and unlinked on every transaction), the pools, and the check of each Query's text for the
# exact hand-over (the statement analysis's cache, asked per transaction, and its residue view); the
# client's PostgreSQL session, its model of each server session and its settings sync, and the lease
# that takes and gives back server connections (every message and every transaction pass through them).
MODULES = (
    "router.net.client",
    "router.sql.analysis",
    "router.protocol.pg.session",
    "router.protocol.pg.session_core",
    "router.protocol.pg.extended",
    "router.protocol.pg.handover",
    "router.protocol.pg.server_session",
    "router.core.lease",
    "router.sql.inert_statements",
    "router.net.server",
    "router.net.flow",
    "router.core.pool",
    "router.protocol.pg.framing",
    "router.protocol.pg.frontend",
    "router.protocol.pg.backend",
    "router.protocol.pg.responses",
    "router.protocol.pg.prepared",
)

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = Path(__file__).resolve().parent / "native.json"


def source_path(module: str) -> Path:
    return _PACKAGE_ROOT.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def extension_paths(module: str) -> list[Path]:
    """The compiled files that would be imported instead of the module's source."""
    source = source_path(module)
    candidates = (source.with_name(source.stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    return [path for path in candidates if path.exists()]


def compiled_modules() -> list[str]:
    return [module for module in MODULES if extension_paths(module)]


def write_manifest() -> None:
    """Record the sources as they are now (setup.py calls this after a successful build)."""
    MANIFEST.write_text(json.dumps({module: source_digest(module) for module in MODULES}, indent=1) + "\n")


def stale_modules() -> list[str]:
    """Compiled modules whose source differs from the one they were built from."""
    compiled = compiled_modules()
    if not compiled:
        return []
    try:
        built = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    return [module for module in compiled if built.get(module) != source_digest(module)]


def refuse_stale() -> None:
    stale = stale_modules()
    if stale:
        raise ImportError(
            f"compiled modules no longer match their sources: {', '.join(stale)}. Rebuild them with"
            " `python setup.py build_ext --inplace` (or ./setup.sh), or delete their .so files to run"
            " the Python sources"
        )


def describe() -> str:
    """One line for the log: how the forwarding path runs in this process."""
    compiled = compiled_modules()
    if not compiled:
        return "forwarding path: pure Python (no compiled modules; see setup.py)"
    if len(compiled) == len(MODULES):
        return f"forwarding path: compiled with mypyc ({len(compiled)} modules)"
    return f"forwarding path: partly compiled ({', '.join(compiled)})"
