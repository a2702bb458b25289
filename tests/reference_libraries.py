"""torch and transformers for the parity tests, or a skip that says why they are missing."""

from __future__ import annotations

import types

import pytest

TORCH_MISSING = ("the transformers parity tests need torch, whose CPU-only wheel exists for Python 3.11 only "
                 "(scripts/test_newest.sh runs Python 3.12 without it)")


def torch_and_transformers() -> tuple[types.ModuleType, types.ModuleType]:
    """(torch, transformers), skipping the calling test (or module) when either is not installed."""
    return pytest.importorskip("torch", reason=TORCH_MISSING), pytest.importorskip("transformers")
