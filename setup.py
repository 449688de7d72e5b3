"""Packaging lives in pyproject.toml; this file only adds the compiled forwarding path, on request.

`python setup.py build_ext --inplace` (setup.sh runs it) compiles the modules listed in
router/native.py with mypyc, next to their sources, and records what they were built from. A plain
`pip install` builds no extension and the router runs as pure Python: mypyc type-checks what it
compiles, which needs the project's installed dependencies, and an isolated build environment
does not have them.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup

# router/native.py is loaded on its own: importing the package would refuse stale compiled modules,
# which is exactly what a rebuild is for.
_spec = importlib.util.spec_from_file_location("_router_native", Path(__file__).parent / "router" / "native.py")
assert _spec is not None and _spec.loader is not None
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)

ext_modules = []
if "build_ext" in sys.argv:
    from mypyc.build import mypycify

    root = Path(__file__).parent.resolve()
    sources = [str(native.source_path(module).relative_to(root)) for module in native.MODULES]
    # separate=True: one extension per module, inside the package (no shared library at the top level).
    ext_modules = mypycify(sources, opt_level="3", separate=True)

setup(ext_modules=ext_modules)

if ext_modules:
    native.write_manifest()
