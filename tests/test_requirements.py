"""setup.py's ranges and constraints-cpu.txt's pins agree: CI's exact set lies inside the ranges users get,
and every direct requirement is pinned for CI (in the constraints, or exactly in setup.py)."""

from __future__ import annotations

import ast
import pathlib

import pytest

requirements = pytest.importorskip("packaging.requirements")
utils = pytest.importorskip("packaging.utils")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _setup_lists() -> dict[str, list[str]]:
    """The string lists assigned at the top of setup.py, and the extras' lists, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                for extra, items in value.items():
                    lists[f"extra:{extra}"] = items
            else:
                lists[node.targets[0].id] = value
    return lists


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[utils.canonicalize_name(name)] = version
    return pins


def _direct_requirements() -> list:
    lists = _setup_lists()
    return [requirements.Requirement(text) for text in lists["INSTALL_REQUIRES"] + lists["TEST_REQUIRES"]]


def test_every_pin_lies_inside_its_range():
    pins = _pins()
    for requirement in _direct_requirements():
        name = utils.canonicalize_name(requirement.name)
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def _pinned_in_setup(requirement) -> bool:
    return [spec.operator for spec in requirement.specifier] == ["=="]


def test_every_direct_requirement_is_pinned_for_ci():
    pins = _pins()
    unpinned = [r.name for r in _direct_requirements()
                if utils.canonicalize_name(r.name) not in pins and not _pinned_in_setup(r)]
    assert not unpinned, f"add these to constraints-cpu.txt: {unpinned}"


def test_accelerator_extras_cover_the_same_jax_range():
    lists = _setup_lists()
    jax_range = next(r.specifier for r in _direct_requirements() if r.name == "jax")
    for extra in ("cuda", "cuda12", "tpu"):
        [text] = lists[f"extra:{extra}"]
        requirement = requirements.Requirement(text)
        assert requirement.name == "jax" and requirement.extras and requirement.specifier == jax_range, text
