"""The sandbox's import rules, read from its source (nothing is run):

- no module imports ``worker`` or ``producers`` (the sandbox stands alone);
- the core modules import no API subpackage, the admin or the app (the APIs
  import the core; ``sandbox.app`` composes them);
- the API subpackages do not import one another;
- only ``sandbox.server`` reads the environment.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[3] / "sandbox"
CORE = ("common", "connection", "core", "faults", "store")
APIS = ("xsolla", "backpack", "playfab")
MODULES = sorted(SANDBOX.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(SANDBOX.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_worker_or_producers(path: Path) -> None:
    assert not {m for m in _imports(path) if _within(m, "worker") or _within(m, "producers")}


@pytest.mark.parametrize("name", CORE)
def test_core_imports_no_api(name: str) -> None:
    forbidden = [f"sandbox.{api}" for api in APIS] + ["sandbox.admin", "sandbox.app", "sandbox.server"]
    imported = _imports(SANDBOX / f"{name}.py")
    assert not {m for m in imported for f in forbidden if _within(m, f)}


@pytest.mark.parametrize("api", APIS)
def test_apis_do_not_import_each_other(api: str) -> None:
    others = [f"sandbox.{other}" for other in APIS if other != api]
    for path in sorted((SANDBOX / api).glob("*.py")):
        assert not {m for m in _imports(path) for o in others if _within(m, o)}, path


def test_only_the_server_reads_the_environment() -> None:
    readers = {
        _name(path)
        for path in MODULES
        if any(
            isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    assert readers == {"sandbox.server"}
