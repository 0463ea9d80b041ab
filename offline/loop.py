"""`escalon loop`: traffic → harvest → distil → evaluate → promote → refresh → fresh traffic, on one task, measured.

The loop starts a stack of real services on free ports — serving (the replay rungs, and the student once promoted,
in-process Ray-less runtime), the judge, the router with the route log on Escalon's database (SQLite under the data
dir, or PostgreSQL) and prompts stored — and drives it as an operator would:

  1. traffic     the task's prompts (a seeded share of the benchmark's) through the Router API; every route is
                 recorded in the route log;
  2. baseline    the held-out ("fresh") prompts through the same router, before any student exists;
  3. harvest     the `harvest` job, `source: route_log`, over the traffic window only (the baseline is not in it):
                 queries the cheap rung failed and a costlier one answered confidently, labelled with that answer;
  4. distil      the `undo` (or `siked`) job: the student's base rung fine-tuned on those items (small settings);
  5. promote     the `promote` job: student and target rung answer the harvested held-out (`test`) items; a student
                 within `margin` of the target's accuracy and cheaper is registered as a rung — serving and the
                 router take it in without a restart (and, given an artefact, folded into it);
  6. refresh     the `refresh` job re-fits the router artefact from the route log (only with `artefact`: without
                 one the router plans cheapest-first and has nothing to refit — said so in the report);
  7. fresh       the held-out prompts again, through the router that now has the student.

The jobs are the distill job kinds themselves (escalon.distill.jobs.validate + their run function, in a thread of
this process, as a worker runs them), not a queue: the loop needs no broker and no worker.

Figures, from the route log (rows of the baseline and fresh phases, by request id) and the benchmark's gold answers
(the parsed final answer of a recorded response scored 1, as the harvest job's benchmark source reads them):

  student share          fresh routes whose final answer came from the student / fresh routes;
  judged accuracy        on the prompts the student answered: the judges' mean confidence in its answer, against
                         the mean confidence in the replaced (target) rung's answer to the same prompts at baseline;
  true accuracy          on those prompts: the share of the student's answers equal to the gold answer, against the
                         target's at baseline; and over all fresh prompts, the final answers' accuracy before/after;
  cost per 1,000         mean total route cost × 1,000 at baseline and fresh; saved = the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.resources
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from escalon.errors import ConfigError

DEMO = Path(str(importlib.resources.files("escalon") / "demo" / "gsm8k-sample.parquet"))
UTC = dt.UTC


@dataclass
class LoopConfig:
    data_dir: Path
    database_url: str = ""  # Escalon's database; empty = SQLite under data_dir
    benchmark: Path = DEMO  # routing-format parquet: the prompts, their recorded answers (the replay rungs'), gold
    rungs: tuple[str, ...] = ("mixtral-8x7b", "gpt-4")  # the ladder the router serves before the student
    catalogue: Path | None = None  # holds the ladder and the student's base rung; default: the packaged one
    student: str = "smollm2-135m"  # the base rung fine-tuned into the student
    teacher: str = "gpt-4"
    target: str = "mixtral-8x7b"  # the rung the student should replace
    method: str = "undo"
    name: str = ""  # the student's rung name; default <task>-student
    fresh_share: float = 0.4
    seed: int = 0
    train_steps: int = 12
    rounds: int = 0
    margin: float = 0.02
    max_tokens: int = 200
    local_samples: int = 3
    concurrency: int = 4
    torch_threads: int | None = None
    model_cache: Path | None = None
    artefact: Path | None = None
    limit: int | None = None  # at most this many benchmark prompts in all
    harvest_min_confidence: float = 0.8  # the costlier rung's confidence for a harvested label
    eval_limit: int | None = None  # at most this many val/test items scored by the distil and promote jobs


@dataclass
class Phase:
    name: str
    request_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failed: int = 0


def _job(kind_name: str, params: dict[str, Any], cfg: LoopConfig, job_id: str) -> dict[str, Any]:
    """One distill job kind, validated and run as a worker runs it (artefacts under <data_dir>/jobs/<id>)."""
    from escalon.distill.jobs import LocalContext, validate

    kind, parsed = validate(kind_name, params, cfg.data_dir)
    return kind.run(parsed, LocalContext(artefact_dir=cfg.data_dir / "jobs" / job_id, job_id=job_id))


def gold_items(cfg: LoopConfig) -> list:  # noqa: ANN201 - escalon.distill.training.data.Item
    """The benchmark's prompts with a gold answer (the `harvest` job's benchmark source)."""
    from escalon.distill.training.data import read_items

    out = _job("harvest", {"source": "benchmark", "path": str(cfg.benchmark)}, cfg, "loop-gold")
    items = read_items(out["artefacts"]["dataset"])
    random.Random(cfg.seed).shuffle(items)
    items = items[: cfg.limit] if cfg.limit else items
    if len(items) < 4:
        raise ConfigError(f"{cfg.benchmark} has {len(items)} prompts with a gold answer; the loop needs at least 4")
    return items


def loop_catalogue(cfg: LoopConfig):  # noqa: ANN201 - (Catalogue of every rung, Catalogue served at first, path)
    """Every rung the loop needs (the ladder, teacher, target, the student's base), written under the data dir for
    the jobs; replay rungs answer from `benchmark`."""
    import yaml

    from escalon.registry import Catalogue, load_catalogue

    base = load_catalogue(cfg.catalogue)
    names = list(dict.fromkeys([*cfg.rungs, cfg.teacher, cfg.target, cfg.student]))
    rungs = []
    for name in names:
        rung = base.get(name, field="--rungs/--teacher/--target/--student")
        if rung.backend == "replay":
            rung = rung.model_copy(update={"benchmark": str(Path(cfg.benchmark).resolve())})
        rungs.append(rung)
    every = Catalogue(rungs=tuple(rungs), source=base.source)
    path = cfg.data_dir / "loop-catalogue.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"rungs": [r.model_dump(mode="json", exclude_none=True) for r in rungs]},
                                   sort_keys=False))
    served = Catalogue(rungs=tuple(every.get(n) for n in cfg.rungs), source=base.source)
    return every, served, path


@contextlib.asynccontextmanager
async def running_stack(cfg: LoopConfig, served):  # noqa: ANN001, ANN201
    """serving → judge → router (route log on, prompts stored), real gRPC servers on free ports."""
    from escalon.db.settings import DatabaseSettings
    from escalon.offline.stack import services_in_process

    serving = {"torch_threads": cfg.torch_threads, **({"model_cache": cfg.model_cache} if cfg.model_cache else {})}
    router = {"local_samples": cfg.local_samples, **({"artefact": cfg.artefact} if cfg.artefact else {})}
    database = DatabaseSettings(data_dir=cfg.data_dir, database_url=cfg.database_url, route_log_prompts=True,
                                route_log_flush_s=0.1)
    async with services_in_process(served, cfg.data_dir, database=database, serving=serving,
                                   router=router) as (server, service):
        yield server.address, service


async def replay(address: str, items: list, phase: str, cfg: LoopConfig) -> Phase:
    """Each item's prompt through the Router API (at most `concurrency` at once)."""
    import grpc

    from escalon.gen.common.v1.common_pb2 import AnswerType
    from escalon.gen.router.v1 import router_pb2, router_pb2_grpc

    kinds = {"number": AnswerType.ANSWER_TYPE_NUMBER, "choice": AnswerType.ANSWER_TYPE_CHOICE}
    out, gate, started = Phase(phase), asyncio.Semaphore(cfg.concurrency), time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        out.request_ids = [f"loop-{phase}-{i}-{item.id}"[:120] for i, item in enumerate(items)]

        async def one(i: int, item) -> None:  # noqa: ANN001
            request_id = out.request_ids[i]
            async with gate:
                try:
                    await stub.Route(router_pb2.RouteRequest(
                        prompt=item.prompt, request_id=request_id, max_tokens=cfg.max_tokens,
                        answer_type=kinds.get(item.answer_type, AnswerType.ANSWER_TYPE_UNSPECIFIED)), timeout=600)
                except grpc.aio.AioRpcError:
                    out.failed += 1

        await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
    out.seconds = round(time.monotonic() - started, 1)
    return out


async def _flushed(service, routes: int, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    """Until the route log has written `routes` records in all (the writer batches off the request path)."""
    writer = service.tenancy.writer
    for _ in range(int(timeout_s / 0.05)):
        stats = writer.snapshot()
        if stats.written + stats.dropped >= routes:
            if stats.dropped:
                raise ConfigError(f"the route log dropped {stats.dropped} records (queue full or database away)")
            return
        await asyncio.sleep(0.05)
    raise ConfigError(f"the route log wrote {writer.snapshot()} within {timeout_s:.0f} s, not the {routes} routes sent")


def read_routes(cfg: LoopConfig, since: dt.datetime) -> dict[str, dict[str, Any]]:
    """The route log's rows since `since`, by request id."""
    from escalon.config import load_settings
    from escalon.db.engine import ready_database
    from escalon.db.routes import RouteFilter, iter_routes
    from escalon.db.settings import DatabaseSettings

    url = cfg.database_url or load_settings(DatabaseSettings, data_dir=cfg.data_dir).database_url
    engine = ready_database(url)
    try:
        return {r["request_id"]: r for r in iter_routes(engine, RouteFilter(since=since))}
    finally:
        engine.dispose()


def _attempt(route: dict[str, Any] | None, rung: str) -> dict[str, Any] | None:
    """The answered attempt of `rung` in a route."""
    return next((a for a in (route or {}).get("attempts", []) if a["rung"] == rung and a.get("samples")), None)


def figures(routes: dict[str, dict[str, Any]], baseline: Phase, fresh: Phase, items: list, student: str,
            target: str) -> dict[str, Any]:
    """The loop's figures from the route log's rows of the baseline and fresh phases (same prompts, same order)."""
    from escalon.distill.training.data import is_correct

    pairs = [(item, routes.get(b), routes.get(f)) for item, b, f in zip(items, baseline.request_ids, fresh.request_ids,
                                                                          strict=True)]
    logged = [(i, b, f) for i, b, f in pairs if b is not None and f is not None]
    by_student = [(i, b, f) for i, b, f in logged if f.get("rung") == student]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    def correct(route_or_attempt: dict[str, Any] | None, item) -> bool:  # noqa: ANN001
        text = (route_or_attempt or {}).get("answer") or ""
        return bool(text) and is_correct(text, item)

    s_attempts = [_attempt(f, student) for _, _, f in by_student]
    t_attempts = [_attempt(b, target) for _, b, _ in by_student]
    cost_b = mean([b["total_cost_usd"] or 0.0 for _, b, _ in logged])
    cost_f = mean([f["total_cost_usd"] or 0.0 for _, _, f in logged])
    return {
        "fresh_routes": len(fresh.request_ids), "logged_pairs": len(logged),
        "student_answered": len(by_student),
        "student_share": len(by_student) / len(logged) if logged else 0.0,
        "student_tried": sum(1 for _, _, f in logged if _attempt(f, student) is not None),
        "judged_accuracy": {"student": mean([float(a["confidence"] or 0) for a in s_attempts if a]),
                            target: mean([float(a["confidence"] or 0) for a in t_attempts if a])},
        "true_accuracy": {"student": mean([float(correct(a, i)) for a, (i, _, _) in zip(s_attempts, by_student)
                                           if a]),
                          target: mean([float(correct(a, i)) for a, (i, _, _) in zip(t_attempts, by_student) if a])},
        "true_accuracy_all": {"baseline": mean([float(correct(b, i)) for i, b, _ in logged]),
                              "fresh": mean([float(correct(f, i)) for i, _, f in logged])},
        "answered_by": {"baseline": _counts(b.get("rung") for _, b, _ in logged),
                        "fresh": _counts(f.get("rung") for _, _, f in logged)},
        "cost_per_1000_usd": {"baseline": None if cost_b is None else cost_b * 1000,
                              "fresh": None if cost_f is None else cost_f * 1000,
                              "saved": None if cost_b is None else (cost_b - cost_f) * 1000},
    }


def _counts(values) -> dict[str, int]:  # noqa: ANN001
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _harvest(cfg: LoopConfig, since: dt.datetime, until: dt.datetime, task: str) -> dict[str, Any]:
    """The `harvest` job over the traffic window. A small harvest can leave a split empty by chance (splits are a
    hash of the prompt); distillation needs train and val items and promotion held-out ones, so the split seed is
    moved (0, 1, ...) until every split has one, and the seed used is reported."""
    last: dict[str, Any] = {}
    for seed in range(20):
        last = _job("harvest", {"source": "route_log", "since": since.isoformat(), "until": until.isoformat(),
                                "min_confidence": cfg.harvest_min_confidence, "seed": seed,
                                "val_fraction": 0.2, "test_fraction": 0.25,
                                **({"task": task} if cfg.artefact else {})}, cfg, f"loop-harvest-{seed}")
        if all((last.get("splits") or {}).get(s) for s in ("train", "val", "test")):
            return {**last, "split_seed": seed}
    raise ConfigError(f"the traffic gave {last.get('items')} harvestable items, too few for train, val and test "
                      f"splits ({last.get('splits')}): send more traffic (a larger benchmark or --fresh-share lower)")


def _distil_params(cfg: LoopConfig, dataset: str, catalogue: Path) -> dict[str, Any]:
    params: dict[str, Any] = {
        "teacher": cfg.teacher, "student": cfg.student, "data": dataset, "catalogue": str(catalogue),
        "train": {"max_steps": cfg.train_steps, "batch_size": 4, "r": 8, "alpha": 16, "lr": 5e-4,
                  "checkpoint_every": max(cfg.train_steps, 1)},
        "max_new_tokens": cfg.max_tokens, "torch_threads": cfg.torch_threads,
    }
    if cfg.method == "undo":
        params["rounds"] = cfg.rounds
    if cfg.eval_limit:
        params.update(limit_val=cfg.eval_limit, limit_test=cfg.eval_limit)
    if cfg.model_cache:
        params["models_dir"] = str(cfg.model_cache)
    return params


@contextlib.contextmanager
def job_environment(cfg: LoopConfig):  # noqa: ANN201
    """What a distill worker beside this router would be configured with: the router's database (the harvest and
    refresh jobs read the route log from ESCALON_DATABASE_URL) and the benchmark's folder as a job input folder."""
    import os

    from escalon.config import load_settings
    from escalon.db.settings import DatabaseSettings

    url = cfg.database_url or load_settings(DatabaseSettings, data_dir=cfg.data_dir).database_url
    folders = [p for p in os.environ.get("ESCALON_DISTILL_INPUT_DIRS", "").split(os.pathsep) if p]
    wanted = {"ESCALON_DATABASE_URL": url,
              "ESCALON_DISTILL_INPUT_DIRS": os.pathsep.join([*folders, str(Path(cfg.benchmark).resolve().parent)])}
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def run_loop(cfg: LoopConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole loop; returns the report (what each step did and the figures)."""
    cfg.data_dir = Path(cfg.data_dir).expanduser().resolve()
    with job_environment(cfg):
        return await _run_loop(cfg, say)


async def _run_loop(cfg: LoopConfig, say: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    items = gold_items(cfg)
    n_fresh = max(2, round(len(items) * cfg.fresh_share))
    traffic, fresh_items = items[n_fresh:], items[:n_fresh]
    _, served, catalogue = loop_catalogue(cfg)
    task = (items[0].source.split(" ")[0] if items[0].source else "") or "task"
    name = cfg.name or f"{Path(cfg.benchmark).stem.split('-')[0]}-student"
    report: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                              "prompts": {"traffic": len(traffic), "fresh": len(fresh_items)}, "student": name}
    since = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    async with running_stack(cfg, served) as (address, service):
        say(f"stack up (router {address}); {len(traffic)} traffic prompts, {len(fresh_items)} fresh")
        phase_a = await replay(address, traffic, "a", cfg)
        await _flushed(service, len(traffic))
        until = dt.datetime.now(UTC)
        say(f"1 traffic: {len(traffic)} routes in {phase_a.seconds} s ({phase_a.failed} failed)")
        baseline = await replay(address, fresh_items, "b0", cfg)
        say(f"2 baseline: {len(fresh_items)} fresh routes in {baseline.seconds} s")
        steps: dict[str, Any] = {}
        t = time.monotonic()
        harvest = await asyncio.to_thread(_harvest, cfg, since, until, task)
        steps["harvest"] = {"items": harvest["items"], "splits": harvest.get("splits"),
                            "split_seed": harvest["split_seed"], "seconds": round(time.monotonic() - t, 1)}
        say(f"3 harvest: {json.dumps(steps['harvest'])}")
        dataset = harvest["artefacts"]["dataset"]
        t = time.monotonic()
        distil = await asyncio.to_thread(_job, cfg.method, _distil_params(cfg, dataset, catalogue), cfg, "loop-distil")
        steps["distil"] = {"method": cfg.method, "seconds": round(time.monotonic() - t, 1),
                           **{k: distil.get(k) for k in ("rounds", "best_round", "test", "final") if k in distil}}
        say(f"4 distil ({cfg.method}): {steps['distil']['seconds']} s")
        t = time.monotonic()
        promote_params = {"student": "job:loop-distil", "target": cfg.target, "data": dataset, "margin": cfg.margin,
                          "name": name, "max_new_tokens": cfg.max_tokens, "catalogue": str(catalogue),
                          "torch_threads": cfg.torch_threads, "base_rung": cfg.student,
                          **({"models_dir": str(cfg.model_cache)} if cfg.model_cache else {}),
                          **({"limit": cfg.eval_limit} if cfg.eval_limit else {}),
                          **({"router_artefact": str(cfg.artefact), "router_task": task} if cfg.artefact else {})}
        promotion = await asyncio.to_thread(_job, "promote", promote_params, cfg, "loop-promote")
        steps["promote"] = {k: promotion.get(k) for k in ("decision", "reason", "student", "target_scores", "items",
                                                          "split")}
        steps["promote"]["seconds"] = round(time.monotonic() - t, 1)
        say(f"5 promote: {promotion['decision']}: {promotion['reason']}")
        if cfg.artefact:
            refresh = await asyncio.to_thread(_job, "refresh", {"artefact": str(cfg.artefact), "since": since.isoformat(),
                                                                 "min_rows": 1}, cfg, "loop-refresh")
            steps["refresh"] = refresh
            say(f"6 refresh: {refresh['cells_refitted']} cells from {refresh['outcomes']} outcomes")
        else:
            steps["refresh"] = {"skipped": "no router artefact: the router plans cheapest-first, nothing to refit"}
            say("6 refresh: skipped (no --artefact; the router plans cheapest-first)")
        report["steps"] = steps
        fresh = await replay(address, fresh_items, "b", cfg)
        await _flushed(service, len(traffic) + 2 * len(fresh_items))
        say(f"7 fresh: {len(fresh_items)} routes in {fresh.seconds} s ({fresh.failed} failed)")
    routes = read_routes(cfg, since)
    report["figures"] = figures(routes, baseline, fresh, fresh_items, name, cfg.target)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def render(report: dict[str, Any]) -> str:
    """The figures as the command prints them."""
    f, target, student = report["figures"], report["config"]["target"], report["student"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    def usd(x: float | None) -> str:
        return "n/a" if x is None else f"${x:.4f}"

    lines = [
        f"promotion: {report['steps']['promote']['decision']} — {report['steps']['promote']['reason']}",
        f"fresh traffic: {f['logged_pairs']} prompts (answered before: {f['answered_by']['baseline']}, "
        f"after: {f['answered_by']['fresh']})",
        f"share answered by the student {student}: {pct(f['student_share'])} "
        f"({f['student_answered']} of {f['logged_pairs']}; tried on {f['student_tried']})",
        f"on those prompts — judged accuracy: student {pct(f['judged_accuracy']['student'])} vs {target} "
        f"{pct(f['judged_accuracy'][target])}; true accuracy: student {pct(f['true_accuracy']['student'])} vs "
        f"{target} {pct(f['true_accuracy'][target])}",
        f"all fresh prompts — true accuracy before {pct(f['true_accuracy_all']['baseline'])}, after "
        f"{pct(f['true_accuracy_all']['fresh'])}",
        f"cost per 1,000 queries: before {usd(f['cost_per_1000_usd']['baseline'])}, after "
        f"{usd(f['cost_per_1000_usd']['fresh'])}, saved {usd(f['cost_per_1000_usd']['saved'])}",
        f"loop took {report['seconds']} s",
    ]
    return "\n".join(lines)
