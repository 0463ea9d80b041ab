"""Invalid values fail before anything reaches a cluster, with a message that names the fix.

Each file in invalid/ starts with `# expect: <message>`: rendering it on top of the chart's
defaults must fail with that message (types from values.schema.json, invariants from `fail`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chartkit import CHART_DIR, ChartRenderer, helm

pytestmark = pytest.mark.unit

INVALID = sorted(Path(__file__).with_name("invalid").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def test_there_are_invalid_cases() -> None:
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_values_fail_with_a_clear_message(chart: ChartRenderer, path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    with pytest.raises(helm.HelmError) as failure:
        chart.render(values)
    message = str(failure.value)
    assert expected_message(path) in message, message
    # One problem, one message: not a template engine trace.
    assert "nil pointer" not in message and "at <" not in message, message


# Lint runs `fail` in a logging-only mode, so it reports the schema's findings, not the guards'.
SCHEMA_CASES = [p for p in INVALID if expected_message(p).startswith("at '")]


@pytest.mark.parametrize("path", SCHEMA_CASES, ids=[p.stem for p in SCHEMA_CASES])
def test_lint_reports_values_the_schema_rejects(path: Path) -> None:
    report = helm.lint(CHART_DIR, yaml.safe_load(path.read_text()), strict=True)
    errors = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] == 3]
    assert any(expected_message(path) in error for error in errors), report
