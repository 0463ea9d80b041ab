"""Fixtures of the serving unit tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which leaves sys.path alone: make servingkit importable.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Converted local models: a fresh folder per test session, so the GGUF conversion itself is tested.
    Set ESCALON_MODEL_CACHE to reuse a developer's cache instead."""
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "serving-models"
