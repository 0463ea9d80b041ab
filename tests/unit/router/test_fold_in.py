"""Folding a promoted student into a router artefact (escalon.offline.evaluation.fold) on a small synthetic benchmark:
the real artefact files, the real profile table the promote job writes, the real HybridPolicy."""

import json

import numpy as np
import pytest

from escalon.distill.jobs.profile import ProfileParams, build_table
from escalon.errors import ConfigError
from escalon.registry import Catalogue, Rung
from escalon.router.artefact import LiveArtefact, load_artefact
from escalon.benchmark import load_benchmark
from escalon.router.embedding import HashingEncoder
from escalon.offline.evaluation.evaluation import evaluate
from escalon.offline.evaluation.fold import fold_promotion
from escalon.router.policy import RouteQuery
from escalon.offline.evaluation.replay_cascade import replay_catalogue
from escalon.router.routing import HybridPolicy
from escalon.offline.evaluation.synthetic import write_synthetic

pytestmark = pytest.mark.unit
STUDENT = "small-distilled-1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fold")
    path = write_synthetic(folder / "benchmark.parquet", n=120)
    evaluate(path, encoder=HashingEncoder.name, cache_dir=None, artefact_dir=folder / "artefact",
             policies=["single", "hybrid"])
    return folder, path


def promotion(folder, registered=True, student_accuracy=0.93, task="mul"):
    """What the promote job writes: promotion.json and profile.json (built by the job's own build_table)."""
    n = 60
    sums = {STUDENT: {task: [n, n, student_accuracy * n, student_accuracy * n, n, n * 2e-7]},
            "large": {task: [n, n, 0.95 * n, 0.95 * n, n, n * 4e-5]}}
    table = build_table(sums, ProfileParams(benchmark="-", split="test", min_rows=30))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.json").write_text(json.dumps(table))
    rung = {"name": STUDENT, "family": "cheapco", "backend": "hf", "model": str(folder / "merged"), "max_tokens": 64,
            "price": {"input_per_1m": 0.01, "output_per_1m": 0.01}}
    (folder / "promotion.json").write_text(json.dumps({
        "registered": registered, "decision": "promoted" if registered else "rejected", "rung": rung,
        "target": "large", "artefacts": {"profile": str(folder / "profile.json")}}))
    return folder, rung


def test_a_promoted_student_becomes_a_column_routed_where_it_was_proven(trained, tmp_path):
    import shutil

    folder, path = trained
    artefact_dir = tmp_path / "artefact"
    shutil.copytree(folder / "artefact", artefact_dir)
    live = LiveArtefact(artefact_dir, check_interval_s=0.0)
    before = live.current()
    job, rung = promotion(tmp_path / "job")

    changed = fold_promotion(artefact_dir, job)
    after = live.current()  # the running router's view: swapped without a restart
    assert after.version == changed["version"] != before.version
    assert after.model.rungs == [*before.model.rungs, STUDENT]
    assert changed["profile_accuracy"]["mul"] == pytest.approx(
        before.model.profile.acc[before.model.profile.tasks.index("mul"), :, 0].mean() * 0.93 / 0.95)

    bench = load_benchmark(path)
    prompts = bench.prompts["prompt"]
    mul = [p for p, t in zip(prompts, bench.tasks) if t == "mul"][:8]
    div = [p for p, t in zip(prompts, bench.tasks) if t == "div"][:8]
    catalogue = Catalogue(rungs=[*replay_catalogue(bench).rungs, Rung.model_validate(rung)])
    policy = HybridPolicy(after.model, HashingEncoder(), after.judge_weights, probe=False)
    names = [r.name for r in catalogue.rungs]
    picks = {kind: [policy.plan(RouteQuery(prompt=p, threshold=0.5), catalogue, names).rungs[-1] for p in ps]
             for kind, ps in (("mul", mul), ("div", div))}
    # proven on multiplication at 93/95 of the large model's accuracy for a fraction of its price: chosen there;
    # never measured on division, where it borrows the weakest rung's accuracy: not chosen there
    assert picks["mul"].count(STUDENT) >= 6, picks
    assert STUDENT not in picks["div"], picks
    x = HashingEncoder().encode(div)
    success = after.model.predict(x, np.array([len(p) for p in div], float)).hybrid
    large = after.model.rungs.index("large")
    assert (success[:, -1] < success[:, large] - 0.2).all()  # an unproven rung is not trusted like a proven one


def test_folding_refuses_what_it_cannot_route_and_names_the_fix(trained, tmp_path):
    import shutil

    folder, _ = trained
    artefact_dir = tmp_path / "artefact"
    shutil.copytree(folder / "artefact", artefact_dir)
    version = load_artefact(artefact_dir).version
    with pytest.raises(ConfigError, match="not promoted"):
        fold_promotion(artefact_dir, promotion(tmp_path / "rejected", registered=False)[0])
    with pytest.raises(ConfigError, match="not in the artefact's taxonomy.*--task"):
        fold_promotion(artefact_dir, promotion(tmp_path / "other", task="gsm8k")[0])
    with pytest.raises(ConfigError, match="no promotion.json"):
        fold_promotion(artefact_dir, tmp_path / "nowhere")
    job = promotion(tmp_path / "ok")[0]
    fold_promotion(artefact_dir, job)
    with pytest.raises(ConfigError, match="already routes to"):
        fold_promotion(artefact_dir, job)
    assert load_artefact(artefact_dir).version != version  # only the good fold wrote a version


def test_the_promote_job_folds_its_rung_into_the_router_artefact_and_reports_a_fold_it_cannot_make(trained, tmp_path):
    import shutil

    from escalon.distill.jobs import LocalContext
    from escalon.offline.jobs.promote import PromoteParams, _fold_into_router

    folder, _ = trained
    artefact_dir = tmp_path / "artefact"
    shutil.copytree(folder / "artefact", artefact_dir)
    job, _ = promotion(tmp_path / "job")
    ctx = LocalContext(artefact_dir=job)
    folded = _fold_into_router(PromoteParams.model_construct(router_artefact=str(artefact_dir), router_task=None), ctx)
    assert folded["folded"] and STUDENT in load_artefact(artefact_dir).model.rungs
    other, _ = promotion(tmp_path / "other", task="gsm8k")
    fresh = tmp_path / "fresh"
    shutil.copytree(folder / "artefact", fresh)
    failed = _fold_into_router(PromoteParams.model_construct(router_artefact=str(fresh), router_task=None),
                               LocalContext(artefact_dir=other))
    assert not failed["folded"] and "--task" in failed["reason"] and "fold-in" in failed["fix"]


def test_the_fold_in_command_prints_the_new_version_and_exits_2_naming_a_bad_promotion(trained, tmp_path, capsys):
    import shutil

    from escalon.cli import main

    folder, _ = trained
    artefact_dir = tmp_path / "artefact"
    shutil.copytree(folder / "artefact", artefact_dir)
    with pytest.raises(SystemExit) as done:
        main(["router", "fold-in", "--artefact", str(artefact_dir), "--promotion", str(tmp_path / "nope")])
    assert done.value.code == 2 and "no promotion.json" in capsys.readouterr().err
    job, _ = promotion(tmp_path / "job")
    with pytest.raises(SystemExit) as done:
        main(["router", "fold-in", "--artefact", str(artefact_dir), "--promotion", str(job)])
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["version"] == load_artefact(artefact_dir).version
