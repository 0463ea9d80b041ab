"""The floors of the house and the direction of their imports (STYLE.md practices 13 and 14, docs/architecture.md).

    ground    shared/escalon (escalon.*; gen excluded: generated)   imports nothing above it
    services  services/<name> (escalon.<name>)                      ground and itself only, never another service
    offline   offline/ (escalon.offline.*)                          ground, services, offline
    cli       cli/ (escalon.cli)                                    anything

Every import counts, function-level ones included: a lazy import is still a dependency. The size rule keeps
rooms small: a file over FILE_LIMIT lines or a function over FUNCTION_LIMIT lines fails unless it is listed
below, with its size when listed; the lists may only shrink (an entry whose file has come under the limit, or
grown past its listed size, fails too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ("router", "judge", "serving", "distill", "gateway")
FILE_LIMIT = 500
FUNCTION_LIMIT = 100

# path -> lines when listed. May only shrink: remove an entry once its file is split.
FILE_EXCEPTIONS: dict[str, int] = {}
# "path:function" -> lines when listed. May only shrink.
FUNCTION_EXCEPTIONS: dict[str, int] = {
    "offline/evaluation/evaluation.py:evaluate": 105,
}


def _sources() -> list[Path]:
    roots = [ROOT / "shared" / "escalon", ROOT / "services", ROOT / "offline", ROOT / "cli"]
    return sorted(p for r in roots for p in r.rglob("*.py") if "gen" not in p.relative_to(ROOT).parts)


def floor_of(path: Path) -> tuple[str, str]:
    """(floor, owner): ('ground', ''), ('service', 'router'), ('offline', ''), ('cli', '')."""
    parts = path.relative_to(ROOT).parts
    if parts[0] == "shared":
        return "ground", ""
    if parts[0] == "services":
        return "service", parts[1]
    return parts[0], ""


def target_of(module: str) -> tuple[str, str] | None:
    """The floor a module of the escalon namespace lives on; None for anything outside it."""
    parts = module.split(".")
    if parts[0] != "escalon" or len(parts) == 1:
        return None if parts[0] != "escalon" else ("ground", "")
    if parts[1] in SERVICES:
        return "service", parts[1]
    if parts[1] in ("offline", "cli"):
        return parts[1], ""
    return "ground", ""


def imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
            # `from escalon import judge` names a package: count what it imports
            if node.module == "escalon":
                out += [(f"escalon.{alias.name}", node.lineno) for alias in node.names]
    return out


def allowed(floor: str, owner: str, target: tuple[str, str]) -> bool:
    to_floor, to_owner = target
    if floor == "ground":
        return to_floor == "ground"
    if floor == "service":
        return to_floor == "ground" or (to_floor == "service" and to_owner == owner)
    if floor == "offline":
        return to_floor in ("ground", "service", "offline")
    return True  # the CLI sits on top


def wrong_way_imports() -> list[str]:
    wrong = []
    for path in _sources():
        floor, owner = floor_of(path)
        for module, line in imports(path):
            target = target_of(module)
            if target is not None and not allowed(floor, owner, target):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({floor}{'/' + owner if owner else ''}) imports {module}")
    return wrong


def test_imports_point_one_way():
    wrong = wrong_way_imports()
    assert not wrong, "imports against the direction of the floors (docs/architecture.md):\n" + "\n".join(wrong)


def test_the_rule_sees_the_wrong_ways():
    """The checker itself: each kind of wrong-way import is caught, and the right ways pass."""
    assert not allowed("service", "router", ("service", "judge"))
    assert not allowed("service", "distill", ("offline", ""))
    assert not allowed("ground", "", ("service", "serving"))
    assert not allowed("ground", "", ("cli", ""))
    assert not allowed("offline", "", ("cli", ""))
    assert allowed("service", "router", ("service", "router"))
    assert allowed("offline", "", ("service", "judge"))
    assert target_of("escalon.gen.judge.v1.judge_pb2") == ("ground", "")
    assert target_of("escalon.offline.judging.report") == ("offline", "")
    assert target_of("numpy") is None


def _function_sizes(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.name, node.end_lineno - node.lineno + 1))
    return out


def test_files_stay_small():
    over, stale = [], []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        lines = len(path.read_text().splitlines())
        listed = FILE_EXCEPTIONS.get(rel)
        if lines > FILE_LIMIT and (listed is None or lines > listed):
            over.append(f"{rel}: {lines} lines (limit {FILE_LIMIT}{f', listed at {listed}' if listed else ''})")
    for rel, listed in FILE_EXCEPTIONS.items():
        path = ROOT / rel
        if not path.is_file() or len(path.read_text().splitlines()) <= FILE_LIMIT:
            stale.append(f"{rel}: under the limit now (or gone); remove it from FILE_EXCEPTIONS")
    assert not over and not stale, "split the file by job:\n" + "\n".join(over + stale)


def test_functions_stay_small():
    over, seen = [], set()
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        for name, lines in _function_sizes(path):
            key = f"{rel}:{name}"
            listed = FUNCTION_EXCEPTIONS.get(key)
            if lines > FUNCTION_LIMIT:
                seen.add(key)
                if listed is None or lines > listed:
                    over.append(f"{key}: {lines} lines (limit {FUNCTION_LIMIT})")
    stale = [f"{key}: under the limit now (or gone); remove it from FUNCTION_EXCEPTIONS"
             for key in FUNCTION_EXCEPTIONS if key not in seen]
    assert not over and not stale, "\n".join(over + stale)
