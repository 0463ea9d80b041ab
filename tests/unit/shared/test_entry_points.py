"""One entry point for the five services (escalon.main): the same --help shape and the same exit status, 2,
for a bad setting, in one line that names the variable."""

import importlib

import pytest

from escalon.main import CONFIG_ERROR

pytestmark = pytest.mark.unit

SERVICES = ("router", "judge", "serving", "distill", "gateway")


@pytest.mark.parametrize("service", SERVICES)
def test_help_lists_the_environment_from_the_settings(service, capsys):
    main = importlib.import_module(f"escalon.{service}.__main__").main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m escalon.{service}")
    assert "environment:\n" in out and f"ESCALON_{service.upper()}_PORT" in out and "ESCALON_DATA_DIR" in out
    assert "OTEL_" in out


@pytest.mark.parametrize("service", SERVICES)
def test_a_bad_setting_exits_2_in_one_line_naming_it(service, monkeypatch, capsys):
    main = importlib.import_module(f"escalon.{service}.__main__").main
    monkeypatch.setenv(f"ESCALON_{service.upper()}_PORT", "not-a-port")
    assert main([]) == CONFIG_ERROR == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"escalon-{service}: ") and f"ESCALON_{service.upper()}_PORT" in err[0]
