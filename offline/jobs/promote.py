"""`promote`: evaluate a distilled student against the rung it should replace, and register it only if it wins.

Both answer the same held-out items (the data set's `test` split by default) through the serving backends:
the student as the rung it would become (backend `hf` on its merged folder, prompts encoded as serving
encodes them; local models are decoded in batches with the weights the backend loaded), the target through
its own backend (a replay, an endpoint, or a local model). Cost per item is what serving would charge: the
recorded or endpoint cost for the target, the new rung's price times tokens for the student.

    win  ⇔  accuracy(student) ≥ accuracy(target) − margin   and   mean cost(student) < mean cost(target)

A winner is written to <data_dir>/catalogue.promoted.yaml (escalon.registry.register_promoted): the serving
front loads it on first sight and the router routes to it, without a restart. The job also leaves what the
router's profiling needs: profile.json (`escalon.profile/v1`, the two models on this task) and
answers.parquet (their answers in the routing benchmark format, so `profile`/`evaluate` jobs and the
learned router can take the new rung in).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from escalon.distill.jobs.base import JobContext, JobKind, JobParams, pause
from escalon.distill.jobs.distilling import job_catalogue
from escalon.distill.jobs.inputs import confined, configured_catalogue, input_file, model_cache
from escalon.distill.jobs.profile import ProfileParams, build_table
from escalon.distill.training.data import Item, by_split, is_correct, read_items
from escalon.errors import InvalidInput
from escalon.registry import Catalogue, Price, Rung, promoted_path, register_promoted

FORMAT = "escalon.promotion/v1"


class PromoteParams(JobParams):
    student: str = Field(description="merged student folder, or 'job:<id>' for a finished undo/siked job's student")
    target: str = Field(description="the rung the student should replace")
    data: str = Field(description="data set JSONL; relative to the data dir")
    split: str = Field(default="test", description="held-out items to compare on")
    limit: int | None = Field(default=None, ge=1, description="at most this many items")
    margin: float = Field(default=0.02, ge=0, le=1, description="the student may be this much less accurate")
    name: str = Field(default="", description="the new rung's name (default: <base>-distilled-<job>)")
    base_rung: str = Field(default="", description="rung whose limits, family and price the student takes "
                                                   "(default: the one recorded in the student folder)")
    price_per_1m: float | None = Field(default=None, ge=0, description="the new rung's price (default: the base's)")
    promote: bool = Field(default=True, description="false: evaluate only, register nothing")
    max_new_tokens: int = Field(default=96, ge=1, le=4096, description="answer length of both")
    eval_batch_size: int = Field(default=16, ge=1, le=512, description="prompts decoded together (local rungs)")
    torch_threads: int | None = Field(default=None, ge=1, le=256, description="CPU threads (default: all)")
    catalogue: str | None = Field(default=None, description="catalogue YAML (default: ESCALON_CATALOGUE or packaged)")
    router_artefact: str | None = Field(default=None, description="router artefact folder to fold the promoted rung "
                                                                  "into (the running router swaps to it)")
    router_task: str | None = Field(default=None, description="the artefact's taxonomy task the items belong to "
                                                              "(default: the items' task)")
    data_dir: str | None = Field(default=None, description="set at submit")
    models_dir: str | None = Field(default=None, description="set at submit")
    cluster_dry_run: bool = Field(default=False, description="in a cluster: only print the diff promotion would "
                                                             "apply (nothing registered anywhere)")
    step_delay_s: float = Field(default=0.0, ge=0, le=60, description="for tests and demos only")


def prepare(params: PromoteParams, data_dir: Path) -> PromoteParams:
    import os

    student = params.student
    if student.startswith("job:"):
        student = str(Path(data_dir) / "jobs" / student[4:] / "student" / "merged")
    path = confined(student, data_dir, field="params.student")
    if not (path / "config.json").is_file():
        raise InvalidInput(f"no merged student model (config.json) at {str(path)!r}", field="params.student")
    data = input_file(params.data, data_dir, field="params.data", what="data set")
    updates: dict[str, Any] = {"student": str(path.resolve()), "data": str(data.resolve()),
                               "data_dir": str(Path(data_dir).resolve())}
    if not params.models_dir:
        updates["models_dir"] = str(Path(os.environ.get("ESCALON_MODEL_CACHE") or Path(data_dir) / "models").resolve())
    else:  # jobs write converted models there: the model cache or the allowed folders only
        updates["models_dir"] = str(confined(params.models_dir, data_dir, field="params.models_dir",
                                             extra=model_cache()))
    if params.catalogue:  # only the configured catalogue or one in the allowed folders (see distilling.py)
        updates["catalogue"] = str(input_file(params.catalogue, data_dir, field="params.catalogue",
                                              what="catalogue", extra=configured_catalogue()))
    params = params.model_copy(update=updates)
    catalogue = job_catalogue(params)
    catalogue.get(params.target, field="params.target")
    base = params.base_rung or _recorded_base(path)
    if not base:
        raise InvalidInput("the student folder records no base rung; give base_rung", field="params.base_rung")
    catalogue.get(base, field="params.base_rung")
    if params.name and params.name in catalogue.by_name:
        raise InvalidInput(f"rung {params.name!r} already exists; choose another name", field="params.name")
    return params.model_copy(update={"base_rung": base})


def _recorded_base(folder: Path) -> str:
    meta = folder / "escalon-student.json"
    return json.loads(meta.read_text()).get("base_rung", "") if meta.is_file() else ""


def student_rung(params: PromoteParams, catalogue: Catalogue, name: str) -> Rung:
    base = catalogue.get(params.base_rung)
    spec = base.model_dump(exclude_none=True)
    spec.update(name=name, backend="hf", model=params.student)
    if params.price_per_1m is not None:
        spec["price"] = Price(input_per_1m=params.price_per_1m, output_per_1m=params.price_per_1m)
    return Rung.model_validate(spec)


def answer_items(rung: Rung, items: list[Item], params: PromoteParams, ctx: JobContext,
                 label: str) -> list[dict[str, Any]]:
    """Each item's answer and cost from the rung, through the serving backend of that rung."""
    from escalon.backends import GenerateParams, make_backend
    from escalon.tokens import estimate_tokens

    models_dir = Path(params.models_dir or ".")
    backend = make_backend(rung, models_dir=models_dir, torch_threads=params.torch_threads)
    backend.load()
    out: list[dict[str, Any]] = []
    try:
        if rung.is_local:  # the weights serving loaded, decoded in batches
            from escalon.distill.training.lora import StudentModel

            student = StudentModel(rung, models_dir=models_dir, threads=params.torch_threads)
            student._backend, student.tokenizer, student.model = backend, backend.tokenizer, backend.model
            texts = student.generate([i.prompt for i in items], max_new_tokens=params.max_new_tokens,
                                     batch_size=params.eval_batch_size,
                                     on_batch=lambda d, t: ctx.report(0.1 + 0.4 * d / t, f"{label}: {d}/{t} batches"))
            for item, text in zip(items, texts, strict=True):
                n_in, n_out = len(backend.encode(item.prompt)), len(backend.tokenizer(text[0])["input_ids"]) + 1
                out.append({"text": text[0], "cost_usd": rung.cost(n_in, n_out)})
        else:
            loop = asyncio.new_event_loop()
            try:
                for k, item in enumerate(items):
                    try:
                        result = loop.run_until_complete(backend.generate(
                            GenerateParams(prompt=item.prompt, max_tokens=params.max_new_tokens * 4, temperature=0)))
                        text = result.samples[0].text
                        cost = result.cost_usd if result.cost_usd is not None else rung.cost(result.input_tokens,
                                                                                             result.output_tokens)
                    except Exception as exc:  # noqa: BLE001 - an unanswered item counts as wrong, at no cost
                        text, cost = "", 0.0
                        out.append({"text": text, "cost_usd": cost, "error": f"{type(exc).__name__}: {exc}"})
                        continue
                    out.append({"text": text, "cost_usd": cost, "input_tokens": estimate_tokens(item.prompt)})
                    if k % 16 == 0:
                        ctx.report(0.5 + 0.3 * k / len(items), f"{label}: {k}/{len(items)}")
            finally:
                loop.run_until_complete(backend.close())
                loop.close()
    finally:
        if rung.is_local:
            asyncio.run(backend.close())
    return out


def default_rung_name(base: str, job_id: str) -> str:
    """<base>-distilled-<job>: a queue's uuid job id by its first 8 hex digits; a named job id ("promote-seed0")
    by its end, so that two named promote jobs do not get one name. Within a rung name's 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-") or "job"
    suffix = slug[:8] if re.fullmatch(r"[0-9a-f]{32}", slug) else slug[-24:].lstrip("-")
    return f"{base[:63 - len('-distilled-') - len(suffix)]}-distilled-{suffix}"


def run(params: PromoteParams, ctx: JobContext) -> dict[str, Any]:
    started = time.time()
    catalogue = job_catalogue(params)
    items = by_split(read_items(params.data)).get(params.split, [])[: params.limit]
    if not items:
        raise ValueError(f"{params.data} has no {params.split!r} items")
    name = params.name or default_rung_name(params.base_rung, ctx.job_id)
    candidate = student_rung(params, catalogue, name)
    target = catalogue.get(params.target)
    state = ctx.load_checkpoint() or {}
    if "student" not in state:
        state["student"] = answer_items(candidate, items, params, ctx, f"student {name}")
        pause(params.step_delay_s)
        ctx.save_checkpoint(state, progress=0.5, message=f"student answered {len(items)} items", step=0)
    if "target" not in state:
        state["target"] = answer_items(target, items, params, ctx, f"target {target.name}")
        ctx.save_checkpoint(state, progress=0.8, message=f"target answered {len(items)} items", step=1)

    def summary(answers: list[dict[str, Any]]) -> dict[str, Any]:
        correct = [is_correct(a["text"], i) for a, i in zip(answers, items, strict=True)]
        return {"accuracy": sum(correct) / len(items), "mean_cost_usd": sum(a["cost_usd"] for a in answers) / len(items),
                "n": len(items), "correct": correct}

    s, t = summary(state["student"]), summary(state["target"])
    wins_quality = s["accuracy"] >= t["accuracy"] - params.margin
    cheaper = s["mean_cost_usd"] < t["mean_cost_usd"]
    decision = wins_quality and cheaper
    reason = (f"student {s['accuracy']:.1%} vs target {t['accuracy']:.1%} (margin {params.margin:.1%}): "
              f"{'within' if wins_quality else 'outside'} the margin; mean cost ${s['mean_cost_usd']:.8f} vs "
              f"${t['mean_cost_usd']:.8f}: {'cheaper' if cheaper else 'not cheaper'}")
    answers_path = _write_answers(ctx, items, {name: (state["student"], s), target.model: (state["target"], t)})
    profile = _profile(ctx, items, {name: (state["student"], s), target.name: (state["target"], t)}, params)
    registered = False
    overlay = promoted_path(params.data_dir or ".")
    if decision and params.promote and not params.cluster_dry_run:
        register_promoted(overlay, candidate)
        registered = True
    result = {
        "format": FORMAT,
        "decision": "promoted" if registered else ("wins (not registered: promote=false)" if decision else "rejected"),
        "wins": decision,
        "reason": reason,
        "rung": candidate.model_dump(mode="json", exclude_none=True),
        "target": target.name,
        "base_rung": params.base_rung,
        "items": len(items),
        "split": params.split,
        "student": {k: v for k, v in s.items() if k != "correct"},
        "target_scores": {k: v for k, v in t.items() if k != "correct"},
        "registered": registered,
        "overlay": str(overlay) if registered else "",
        "seconds": round(time.time() - started, 1),
        "artefacts": {"answers": str(answers_path), "profile": str(profile)},
    }
    ctx.write_artefact("promotion.json", json.dumps(result, indent=1))
    if registered and params.router_artefact:
        result["router_artefact"] = _fold_into_router(params, ctx)
        ctx.write_artefact("promotion.json", json.dumps(result, indent=1))
    if decision and (registered or params.cluster_dry_run):
        cluster = _apply_in_cluster(params, candidate, ctx)
        if cluster is not None:
            result["cluster"] = cluster
            ctx.write_artefact("promotion.json", json.dumps(result, indent=1))
    ctx.save_checkpoint(state, progress=1.0, message=result["decision"] + ": " + reason, step=2,
                        metrics={"student_accuracy": s["accuracy"], "target_accuracy": t["accuracy"],
                                 "promoted": registered})
    return result


def _fold_into_router(params: PromoteParams, ctx: JobContext) -> dict[str, Any]:
    """The promoted rung becomes a column of the router's artefact. The promotion stands either way: a fold
    that cannot be made (say, the items' task is not in the router's taxonomy) is reported, not raised."""
    from escalon.errors import ConfigError
    from escalon.offline.evaluation.fold import fold_promotion

    try:
        return {"folded": True, **fold_promotion(params.router_artefact, ctx.artefact_dir / "promotion.json",
                                                 params.router_task)}
    except ConfigError as exc:
        return {"folded": False, "reason": str(exc), "artefact": params.router_artefact,
                "fix": "escalon router fold-in --artefact ARTEFACT --promotion JOB_FOLDER --task TASK"}


def _apply_in_cluster(params: PromoteParams, rung: Rung, ctx: JobContext) -> dict[str, Any] | None:
    """In a cluster (or told a kubeconfig): the rung applied to the catalogue ConfigMap and the RayService
    (escalon.offline.jobs.cluster); None where no cluster is wanted. A refusal is reported, not raised: the
    local registration stands and the manual path is named."""
    from escalon.config import load_settings
    from escalon.errors import ConfigError
    from escalon.offline.jobs.cluster import ClusterSettings, apply_promotion

    settings = load_settings(ClusterSettings)
    if not settings.wanted():
        return None
    try:
        applied = apply_promotion(rung, params.base_rung, settings, dry_run=params.cluster_dry_run)
    except ConfigError as exc:
        return {"applied": False, "reason": str(exc),
                "fix": "escalon cluster promote --promotion <this job's promotion.json> (or kubectl apply, "
                       "docs/operations.md)"}
    ctx.write_artefact("cluster.diff", applied["diff"])
    ctx.report(0.95, ("dry run, nothing applied: " if params.cluster_dry_run else "applied: ")
               + ", ".join(applied["objects"]) + "\n" + applied["diff"])
    return {"applied": not params.cluster_dry_run, **applied}


def _write_answers(ctx: JobContext, items: list[Item], by_model: dict[str, tuple[list[dict], dict]]) -> Path:
    import pandas as pd

    rows = []
    for model, (answers, scores) in by_model.items():
        for item, answer, ok in zip(items, answers, scores["correct"], strict=True):
            rows.append({"prompt_id": item.id, "task": item.meta.get("task") or item.source.split(" ")[0] or "distill",
                         "split": "test", "prompt": item.prompt, "model": model, "response": answer["text"],
                         "score": float(ok), "cost_usd": answer["cost_usd"], "cost_source": "serving price"})
    path = ctx.artefact_dir / "answers.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def _profile(ctx: JobContext, items: list[Item], by_model: dict[str, tuple[list[dict], dict]],
             params: PromoteParams) -> Path:
    task = items[0].meta.get("task") or "distill"
    sums = {}
    for model, (answers, scores) in by_model.items():
        n = len(items)
        correct = sum(scores["correct"])
        cost = sum(a["cost_usd"] for a in answers)
        sums[model] = {task: [n, n, float(correct), float(correct), n, cost]}
    table = build_table(sums, ProfileParams(benchmark="-", split="test", min_rows=30))
    table["source"] = {"path": str(params.data), "split": params.split}
    return ctx.write_artefact("profile.json", json.dumps(table, indent=1))


KIND = JobKind(
    name="promote",
    description="evaluate a distilled student against the rung it targets; register it as a new rung if it wins",
    params=PromoteParams,
    run=run,
    prepare=prepare,
)
