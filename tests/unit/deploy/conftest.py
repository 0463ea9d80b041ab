"""Fixtures of the deploy tests: the chart renderer, and the two environments rendered once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which leaves sys.path alone: make the helper module
# beside this file importable by the deploy tests.
sys.path.insert(0, str(Path(__file__).parent))

from chartkit import VALUES_DIR, ChartRenderer, Rendered  # noqa: E402


@pytest.fixture(scope="session")
def chart() -> ChartRenderer:
    return ChartRenderer()


@pytest.fixture(scope="session")
def dev(chart: ChartRenderer) -> Rendered:
    return chart.render_files(VALUES_DIR / "values-dev.yaml")


@pytest.fixture(scope="session")
def prod(chart: ChartRenderer) -> Rendered:
    return chart.render_files(VALUES_DIR / "values-prod.yaml")


