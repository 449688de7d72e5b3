"""router.native: compiled modules must match the sources they were built from."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

import pytest

from router import native


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake package `pkg` with two modules, as router/native.py sees it."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fast.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "slow.py").write_text("Y = 2\n")
    monkeypatch.setattr(native, "_PACKAGE_ROOT", tmp_path)
    monkeypatch.setattr(native, "MANIFEST", tmp_path / "pkg" / "native.json")
    monkeypatch.setattr(native, "MODULES", ("pkg.fast", "pkg.slow"))
    return tmp_path / "pkg"


def _compile(package: Path, stem: str) -> None:
    # Only the file's presence matters to router.native: it is what the import system would load.
    (package / (stem + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")


def test_without_compiled_modules_nothing_is_stale(package: Path) -> None:
    assert native.compiled_modules() == []
    assert native.stale_modules() == []
    native.refuse_stale()
    assert "pure Python" in native.describe()


def test_a_build_records_its_sources_and_an_edit_makes_the_module_stale(package: Path) -> None:
    _compile(package, "fast")
    native.write_manifest()
    assert native.compiled_modules() == ["pkg.fast"]
    assert native.stale_modules() == []
    assert "partly compiled (pkg.fast)" in native.describe()

    (package / "fast.py").write_text("X = 2\n")
    assert native.stale_modules() == ["pkg.fast"]
    with pytest.raises(ImportError, match=r"pkg\.fast.*build_ext --inplace"):
        native.refuse_stale()

    # An uncompiled module may change freely: its source is what runs.
    (package / "fast.py").write_text("X = 1\n")
    (package / "slow.py").write_text("Y = 3\n")
    assert native.stale_modules() == []


def test_compiled_modules_without_a_manifest_are_stale(package: Path) -> None:
    _compile(package, "fast")
    _compile(package, "slow")
    assert native.stale_modules() == ["pkg.fast", "pkg.slow"]
    native.write_manifest()
    assert native.stale_modules() == []
    assert "compiled with mypyc (2 modules)" in native.describe()


def test_the_listed_modules_exist() -> None:
    for module in native.MODULES:
        assert native.source_path(module).is_file(), module
