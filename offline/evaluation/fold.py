"""Folding a promoted rung into a router artefact: the student the distill `promote` job proved becomes a
column of the routing model, so the running router routes to it on the kinds of query it was proven on.

The promote job measured the student (and the rung it targets) on held-out items of one task and wrote
profile.json (`escalon.profile/v1`) beside promotion.json. Folding it in adds a column everywhere the
routing model has one per rung:

- profile Φ: in the cells of the measured task, the target rung's accuracy per complexity scaled by the
  student/target accuracy ratio measured there (the student keeps the target's shape across complexity, at
  its own level); in every other task the student was never measured, so it borrows the weakest rung's
  accuracy and row counts there — the router will not prefer an unproven rung on those queries.
- predictor: no head (no observed rows): the predictor returns Φ for it, so hybrid, learned and taxonomy
  paths all use the measured profile.
- cost: the mean cost per answer the promote job paid (no length term: it was measured on one task).
- memory: an unobserved column (the nearest-prompt estimate ignores it).

The result is written as a new artefact version into the same folder (atomic: `write_artefact`), which a
running router's LiveArtefact picks up without a restart.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from escalon.errors import ConfigError
from escalon.router.artefact import load_artefact, write_artefact
from escalon.router.predictor import SuccessPredictor
from escalon.router.routing_model import RoutingModel
from escalon.router.taxonomy import Profile

PROFILE_FORMAT = "escalon.profile/v1"


def read_promotion(path: Path | str) -> tuple[dict, dict]:
    """promotion.json and the profile.json it names; errors say which file and what to do."""
    path = Path(path).expanduser()
    promotion_file = path if path.suffix == ".json" else path / "promotion.json"
    folder = promotion_file.parent
    try:
        promotion = json.loads(promotion_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no promotion.json at {promotion_file}; pass the artefact folder of a finished promote "
                          "job (`escalon jobs status <id>` names it)", field="promotion") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{promotion_file} is unreadable: {exc}", field="promotion") from None
    if not promotion.get("registered"):
        raise ConfigError(f"{promotion_file}: the student was not promoted ({promotion.get('decision', '?')}); "
                          "only a registered rung can be routed to", field="promotion")
    profile_file = Path(promotion.get("artefacts", {}).get("profile") or folder / "profile.json")
    if not profile_file.is_file():
        profile_file = folder / "profile.json"
    try:
        profile = json.loads(profile_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the promotion's profile {profile_file} is unreadable: {exc}", field="promotion") from None
    if profile.get("format") != PROFILE_FORMAT:
        raise ConfigError(f"{profile_file} has format {profile.get('format')!r}, expected {PROFILE_FORMAT!r}",
                          field="promotion")
    return promotion, profile


def fold_in(model: RoutingModel, rung: dict, target: str, profile: dict, task: str | None = None) -> RoutingModel:
    """`model` with one more column: the promoted `rung` (its catalogue spec), measured against `target`."""
    name, family = rung["name"], rung.get("family", "")
    if name in model.rungs:
        raise ConfigError(f"the artefact already routes to {name!r}", field="rung")
    if target not in model.rungs:
        known = {m: r for r, m in zip(model.rungs, model.models)}
        target = known.get(target, target)
    if target not in model.rungs:
        raise ConfigError(f"the promotion's target rung {target!r} is not a column of this artefact (it has "
                          f"{', '.join(model.rungs)}); fold it into the artefact the target is routed by",
                          field="target")
    cells = {(c["model"], c["task"]): c for c in profile.get("cells", [])}
    measured = sorted({t for (m, t) in cells if m == name})
    task = task or (measured[0] if len(measured) == 1 else None)
    if task is None or (name, task) not in cells:
        raise ConfigError(f"the profile measures {name!r} on tasks {measured or 'none'}; name the one to fold in "
                          "with --task", field="task")
    if task not in model.profile.tasks:
        raise ConfigError(f"task {task!r} is not in the artefact's taxonomy ({', '.join(model.profile.tasks)}); "
                          "pass --task with the taxonomy task the promote job's items belong to", field="task")
    student, reference = cells[(name, task)], cells.get((target, task)) or cells.get((rung.get("model"), task))
    if student.get("accuracy") is None:
        raise ConfigError(f"the profile has no scored rows for {name!r} on {task!r}", field="promotion")

    p = model.profile
    t, col = p.tasks.index(task), p.rungs.index(target)
    acc, cost, count, task_count = (np.concatenate([a, a[..., :1]], axis=-1) for a in
                                    (p.acc, p.cost, p.count, p.task_count))
    weakest = p.acc.argmin(axis=-1)  # [T, K]: the rung whose numbers an unmeasured cell borrows
    T, K = weakest.shape
    for ti in range(T):
        for k in range(K):
            w = weakest[ti, k]
            acc[ti, k, -1], count[ti, k, -1] = p.acc[ti, k, w], p.count[ti, k, w]
        task_count[ti, -1] = p.task_count[ti, weakest[ti, 0]]
    ratio = student["accuracy"] / reference["accuracy"] if reference and reference.get("accuracy") else None
    acc[t, :, -1] = np.clip(p.acc[t, :, col] * ratio, 0, 1) if ratio is not None else student["accuracy"]
    count[t, :, -1] = max(int(student.get("n_scored", 0)), int(p.count[t, :, col].min()))
    task_count[t, -1] = int(student.get("n_scored", 0))
    mean_cost = float(student.get("mean_cost_usd") or 0.0)
    cost[..., -1] = mean_cost

    pr = model.predictor
    predictor = SuccessPredictor(
        [*pr.rungs, name], np.hstack([pr.weight, np.zeros((pr.weight.shape[0], 1))]),
        np.append(pr.prior_scale, 1.0), np.append(pr.bias, 0.0), np.append(pr.rows, 0),
        None if pr.neighbour_scale is None else np.append(pr.neighbour_scale, 0.0))
    nan_column = np.full((len(model.memory_scores), 1), np.nan, dtype=model.memory_scores.dtype)
    return replace(
        model, rungs=[*model.rungs, name], families=[*model.families, family],
        profile=Profile([*p.rungs, name], list(p.tasks), acc, cost, count, task_count), predictor=predictor,
        cost_intercept=np.append(model.cost_intercept, mean_cost), cost_slope=np.append(model.cost_slope, 0.0),
        memory_scores=np.hstack([model.memory_scores, nan_column]),
        models=[*model.models, rung.get("model", name)] if model.models else [])


def fold_promotion(artefact_dir: Path | str, promotion: Path | str, task: str | None = None) -> dict:
    """Fold a promote job's rung into the artefact folder as a new version; returns what changed."""
    artefact = load_artefact(artefact_dir, field="artefact")
    info, profile = read_promotion(promotion)
    model = fold_in(artefact.model, info["rung"], info["target"], profile, task)
    rung = info["rung"]["name"]
    notes = [*artefact.manifest.get("notes", []), f"{rung} folded in from {promotion} (target {info['target']})"]
    write_artefact(artefact_dir, model, artefact.judge_weights, artefact.probe, artefact.manifest.get("source", {}),
                   notes)
    new = load_artefact(artefact_dir, field="artefact")
    column = new.model.rungs.index(rung)
    return {"artefact": str(artefact_dir), "version": new.version, "previous_version": artefact.version,
            "rung": rung, "rungs": new.model.rungs,
            "profile_accuracy": {tk: float(new.model.profile.acc[i, :, column].mean())
                                 for i, tk in enumerate(new.model.profile.tasks)}}
