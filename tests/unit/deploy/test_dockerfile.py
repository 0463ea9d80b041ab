"""The image the chart runs: one Dockerfile whose user, paths and ports agree with the chart."""

from __future__ import annotations

import re
import tomllib

import pytest

from chartkit import ROOT, ChartRenderer

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def instructions(name: str) -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return re.findall(rf"^{name}\s+(.*)$", text, flags=re.M)


def test_image_is_built_from_python_slim_and_installs_the_project() -> None:
    assert instructions("ARG")[0] == "PYTHON_IMAGE=python:3.11-slim"
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert any(cmd.endswith("pip install .") for cmd in instructions("RUN"))
    assert instructions("WORKDIR")[-1] == "/app"


def test_image_user_is_the_one_the_chart_runs_as(chart: ChartRenderer) -> None:
    defaults = chart.merged_values({})
    uid = defaults["podSecurityContext"]["runAsUser"]
    # Numeric, so the kubelet can check runAsNonRoot against the image.
    assert instructions("USER")[-1] == f"{uid}:{defaults['podSecurityContext']['runAsGroup']}"


def test_image_exposes_the_ports_the_chart_uses(chart: ChartRenderer) -> None:
    defaults = chart.merged_values({})
    ports = {defaults[s]["port"] for s in ("router", "judge", "serving", "gateway")} | {defaults["distill"]["front"]["port"]}
    assert set(map(int, instructions("EXPOSE")[-1].split())) == ports


def test_build_context_keeps_what_pip_install_needs() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {path.split("/")[0] for path in project["tool"]["setuptools"]["package-dir"].values()}
    assert not needed & ignored, needed & ignored
    assert {".git", ".venv"} <= ignored
