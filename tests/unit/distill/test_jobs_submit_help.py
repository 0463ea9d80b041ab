"""`escalon jobs submit --help` lists every job kind the distill service knows, each with its one-line
description and its parameters."""

from __future__ import annotations

import pytest

from escalon.cli import build_parser
from escalon.distill.jobs import kinds

pytestmark = pytest.mark.unit


def test_submit_help_lists_every_kind_with_its_description_and_parameters(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["jobs", "submit", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for name, kind in kinds().items():
        assert any(line.split() and line.split()[0] == name and kind.description in line for line in lines), name
        for param in kind.params.model_fields:
            if param not in ("data_dir", "models_dir"):
                assert f" {param} (" in text, (name, param)
    assert "continue_training (default: True)" in text and "--watch" in text
