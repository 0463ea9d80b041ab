"""The package as `pip install .` ships it (deploy/docker/Dockerfile): a wheel built from the repository's files,
installed non-editable into a fresh virtual environment, imports every module of the source tree.

An editable install maps each package folder straight onto the source tree, so a package missing from
pyproject.toml's list (escalon.distill.training once was) still imports there; only a real wheel shows it.
The fresh environment borrows the dependencies of the running one (a .pth line naming its site-packages:
torch and the rest are not reinstalled) but not its editable escalon, whose finder lives in .pth files that a
plain path line does not run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SOURCES = {"shared/escalon": "escalon", "offline": "escalon.offline", "cli": "escalon.cli",
           **{f"services/{s}": f"escalon.{s}" for s in ("router", "judge", "serving", "distill", "gateway")}}


def source_modules() -> list[str]:
    """Every module of the source tree, as its import name."""
    names = []
    for folder, namespace in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            if parts and parts[-1] == "__main__":
                continue
            names.append(".".join([namespace, *parts]))
    return sorted(set(names))


def _repository_files(dest: Path) -> None:
    """The files git would hand to a build (tracked, and new ones not ignored), copied to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know which files a build sees")
    work = tmp_path_factory.mktemp("wheel")
    tree, wheels, env = work / "tree", work / "wheels", work / "venv"
    _repository_files(tree)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(tree)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("escalon-*.whl"))
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    (site / "zz-borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_imports_every_module_of_the_source_tree(installed):
    script = textwrap.dedent("""
        import importlib, json, sys
        from importlib.metadata import entry_points
        failed = {}
        for name in json.loads(sys.argv[1]):
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            if "/site-packages/escalon" not in (module.__file__ or "/site-packages/escalon"):
                failed[name] = f"imported from {module.__file__}, not from the wheel"
        scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name == "escalon"}
        kinds = []
        for ep in entry_points(group="escalon.distill.jobs"):
            try:
                kinds.append(ep.load().name)
            except Exception as exc:
                failed[f"entry point {ep.value}"] = f"{type(exc).__name__}: {exc}"
        kinds.sort()
        print(json.dumps({"failed": failed, "scripts": scripts, "kinds": kinds}))
    """)
    modules = source_modules()
    done = subprocess.run([installed, "-c", script, json.dumps(modules)], capture_output=True, text=True,
                          timeout=600, cwd=installed.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["failed"], "modules the wheel does not ship or cannot import:\n" + "\n".join(
        f"  {name}: {why}" for name, why in sorted(result["failed"].items()))
    assert result["scripts"] == {"escalon": "escalon.cli:main"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["escalon.distill.jobs"]
    assert result["kinds"] == sorted(declared) and {"judge_report", "promote"} <= set(declared)
    assert len(modules) > 100 and "escalon.distill.training.lora" in modules
