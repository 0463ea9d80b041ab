import tomllib
from pathlib import Path

import pytest

from escalon.config import load_settings
from escalon.errors import ConfigError, InvalidInput
from escalon.judge.settings import JudgeSettings
from escalon.registry import load_catalogue
from escalon.router.settings import RouterSettings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


def test_bad_settings_name_the_variable_and_the_problem(monkeypatch):
    monkeypatch.setenv("ESCALON_JUDGE_PORT", "seventy")
    monkeypatch.setenv("ESCALON_GRACE_SECONDS", "-1")
    with pytest.raises(ConfigError) as err:
        load_settings(JudgeSettings)
    message = str(err.value)
    assert "ESCALON_JUDGE_PORT" in message and "'seventy'" in message
    assert "ESCALON_GRACE_SECONDS" in message and "greater than or equal to 0" in message


def test_operating_points_must_be_probabilities(monkeypatch):
    monkeypatch.setenv("ESCALON_ROUTER_OPERATING_POINTS", '{"cheap": 1.5}')
    with pytest.raises(ConfigError, match="ESCALON_ROUTER_OPERATING_POINTS.*cheap"):
        load_settings(RouterSettings)


def test_default_catalogue_loads_with_resolved_paths():
    catalogue = load_catalogue()
    assert catalogue.names == ["smollm2-135m", "gemma3-270m", "mixtral-8x7b", "gpt-4"]
    assert catalogue.get("gpt-4").benchmark.is_file()
    assert [r.name for r in catalogue.cheapest_first()][:2] == ["smollm2-135m", "gemma3-270m"]
    with pytest.raises(InvalidInput, match="unknown rung 'gpt-5'.*smollm2-135m"):
        catalogue.get("gpt-5")


@pytest.mark.parametrize("body, message", [
    ("rungs: []", "at least 1"),
    ("rungs:\n  - {name: a, family: f, backend: openai, model: m, price: {input_per_1m: 1, output_per_1m: 1}}",
     "needs base_url"),
    ("rungs:\n  - {name: a, family: f, backend: hf, model: m, price: {input_per_1m: 1, output_per_1m: 1},"
     " autoscaling: {min_replicas: 3, max_replicas: 2}}", "min_replicas (3) exceeds max_replicas (2)"),
    ("rungs:\n  - {name: a, family: f, backend: hf, model: m, price: {input_per_1m: 1, output_per_1m: 1}}\n"
     "  - {name: a, family: g, backend: hf, model: m, price: {input_per_1m: 1, output_per_1m: 1}}", "appears twice"),
    ("rungs:\n  - {name: a, family: f, backend: tpu, model: m, price: {input_per_1m: 1, output_per_1m: 1}}",
     "rungs.0.backend"),
    ("{not yaml", "not valid YAML"),
])
def test_bad_catalogues_fail_with_the_file_and_the_reason(tmp_path, body, message):
    path = tmp_path / "catalogue.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_catalogue(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_catalogue_says_which_variable_to_set(tmp_path):
    with pytest.raises(ConfigError, match="ESCALON_CATALOGUE"):
        load_catalogue(tmp_path / "nope.yaml")


def test_every_python_package_is_installed_by_the_root_pyproject():
    """A package folder missing from pyproject's list would be absent from a non-editable install (the image)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for package, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
