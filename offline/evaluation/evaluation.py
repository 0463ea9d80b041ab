"""The evaluation harness behind `escalon eval`: train every policy on split=train, measure it on split=test.

Steps: load the benchmark (any file in the shared routing format), embed every prompt once (disk cache), fit
the routing model on train (familiarity thresholds tuned on out-of-fold predictions of train), fit the judge
weights and decide whether the cascade probes on held-out training prompts, then trace each policy's
cost–quality points on the test prompts answered by every model, and summarise them against the best single
model.

Nothing on the test split picks anything: thresholds, weights, the probe decision and every λ are fixed
before the test rows are read; each policy reports all its operating points, and the metrics (AIQ, quality
at the best single model's cost, cost to match it) are computed from those.

Benchmarks without recorded responses cannot be judged on answers: hybrid+cascade then routes with one call
per query (its plans have no probes) and the FrugalGPT baseline is not applicable; the report says so.
Benchmarks whose costs are all equal are quality-only: the report says so and cost is calls × that price.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from escalon.errors import ConfigError
from escalon.offline.evaluation import baselines
from escalon.benchmark import Benchmark, load_benchmark, model_family
from escalon.router.embedding import MINILM, STATIC, cached_encode, make_encoder
from escalon.offline.evaluation.metrics import aiq, cost_to_match, frontier, quality_at_cost, upper_hull
from escalon.router.policy import RouteQuery
from escalon.offline.evaluation.replay_cascade import in_process_cascade, replay_catalogue
from escalon.router.routing import policy_success
from escalon.offline.evaluation.routing_fit import fit_routing_model
from escalon.router.routing_model import LAMBDAS, Prediction, RoutingModel, route_points

FORMAT = "escalon.routing-evaluation/v1"
ROUTERS = ("taxonomy", "learned", "hybrid", "hybrid+cascade", "cascade-routing", "cascade-routing/ex-ante")
BASELINES = ("single", "random-mix", "oracle", "routellm-knn", "routellm-mf", "frugalgpt")
ALL_POLICIES = (*ROUTERS, *BASELINES)
# hybrid+cascade (fixed probes, judge-panel threshold) is the earlier design: its in-process panel is slow on
# large benchmarks and cascade routing supersedes it, so it runs only when asked for
DEFAULT_POLICIES = tuple(p for p in ALL_POLICIES if p != "hybrid+cascade")
DEV_LAMBDAS = LAMBDAS[::3]
DEV_CASCADE_SAMPLE = 1000  # training prompts with answers that fit the judge weights (as many decide probing)


class Progress:
    """What the harness reports while it works; the CLI renders it with rich."""

    def step(self, message: str) -> None:
        pass

    def track(self, items: Iterable, total: int, message: str) -> Iterable:
        return items


@dataclass
class PolicyResult:
    name: str
    points: list[tuple[float, float, float]]  # (cost, quality, calls per query)
    knob: list[float]  # the knob value of each point
    knob_name: str
    note: str = ""
    applicable: bool = True


@dataclass
class Context:
    bench: Benchmark
    x: np.ndarray
    chars: np.ndarray
    train: np.ndarray  # benchmark row indices
    test: np.ndarray  # test rows answered by every model
    model: RoutingModel
    pred: Prediction  # on test rows
    families: list[str]
    notes: list[str] = field(default_factory=list)
    answers: object | None = None  # the recorded answers' keys and checks, read once (cascade routing)

    @property
    def scores(self) -> np.ndarray:
        return self.bench.scores[self.test]

    @property
    def costs(self) -> np.ndarray:
        return self.bench.costs[self.test]


def keep_models_for_test(bench: Benchmark, notes: list[str], min_complete: float = 0.5) -> Benchmark:
    """Policies are compared on test prompts every model answered. On a sparse benchmark, drop the models
    missing most often on test until at least `min_complete` of the test prompts are complete (≥ 2 models)."""
    keep = list(range(len(bench.models)))
    test = bench.test_idx
    observed = ~np.isnan(bench.scores[test]) & ~np.isnan(bench.costs[test])
    dropped = []
    while len(keep) > 2 and observed[:, keep].all(axis=1).mean() < min_complete:
        worst = min(keep, key=lambda j: observed[:, j].sum())
        keep.remove(worst)
        dropped.append(bench.models[worst])
    if not dropped:
        return bench
    notes.append(f"sparse benchmark: {', '.join(dropped)} left out so that most test prompts are answered by "
                 "every remaining model")
    responses = None if bench.responses is None else bench.responses[:, keep]
    return Benchmark(bench.name, bench.path, bench.prompts, [bench.models[j] for j in keep], bench.scores[:, keep],
                     bench.costs[:, keep], responses, bench.split_note, list(bench.notes))


def answerable(bench: Benchmark, rows: np.ndarray) -> np.ndarray:
    if bench.responses is None:
        return np.zeros((len(rows), len(bench.models)), dtype=bool)
    return np.vectorize(lambda v: isinstance(v, str))(bench.responses[rows]).astype(bool)


BUDGET_POINTS = 14
BUDGET_MARGIN = 1.05  # over the worst overrun of recorded cost past the cost model on train


def cost_upper_bound(costs: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rung, (scale, extra) such that scale·ĉ + extra bounded every recorded cost on train (+5%): the
    price a budget is checked against, so a plan that fits is not exceeded in fact. Of the two forms —
    a factor (a cost proportional to length) or an added amount (a long answer to a short prompt) — each rung
    takes the one with the lower mean bound on train."""
    R = costs.shape[1]
    scale, extra = np.ones(R), np.zeros(R)
    for r in range(R):
        seen = ~np.isnan(costs[:, r]) & (predicted[:, r] > 0)
        if not seen.any():
            continue
        c, p = costs[seen, r], predicted[seen, r]
        factor = max(float((c / p).max()), 1.0) * BUDGET_MARGIN
        added = max(float((c - p).max()), 0.0) * BUDGET_MARGIN
        if (p * factor).mean() <= (p + added).mean():
            scale[r] = factor
        else:
            extra[r] = added
    return scale, extra


def budget_bounds(ctx: Context):
    """The replay Cascade whose prices bound every recorded cost on train (cost_upper_bound), and the bound it
    checks a budget against per test prompt and rung."""
    bench, model = ctx.bench, ctx.model
    names, every_text = bench.rung_names(), bench.texts

    def bounds(cascade, rows):
        return np.array([[cascade.cost_bound(cascade.catalogue.get(n), RouteQuery(prompt=every_text[r], threshold=0.0))
                          for n in names] for r in rows])

    plain = in_process_cascade(replay_catalogue(bench, model.cost_intercept, model.cost_slope))
    scale, extra = cost_upper_bound(bench.costs[ctx.train], bounds(plain, ctx.train))
    cascade = in_process_cascade(replay_catalogue(bench, model.cost_intercept * scale + extra,
                                                  model.cost_slope * scale))
    return cascade, bounds(cascade, ctx.test), scale, extra


def route_result(name: str, ctx: Context, success: np.ndarray, note: str = "") -> PolicyResult:
    points = route_points(success, ctx.pred.cost, ctx.scores, ctx.costs, ctx.model.cost_scale, LAMBDAS)
    return PolicyResult(name, [(c, q, 1.0) for c, q in points], list(LAMBDAS), "lambda", note)


def split_rows(bench: Benchmark, notes: list[str], max_test: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows, and the test rows every model answered (a seeded sample of them with --max-test)."""
    complete = ~np.isnan(bench.scores).any(axis=1) & ~np.isnan(bench.costs).any(axis=1)
    test = bench.test_idx[complete[bench.test_idx]]
    train = bench.train_idx
    if len(test) < len(bench.test_idx):
        notes.append(f"{len(bench.test_idx) - len(test)} test prompts not answered by every model are left out")
    if max_test and len(test) > max_test:
        test = np.sort(np.random.default_rng(seed).choice(test, max_test, replace=False))
        notes.append(f"test sample of {max_test} prompts (--max-test)")
    if not len(test) or len(train) < 10:
        raise ConfigError(f"{bench.path}: {len(train)} training and {len(test)} complete test prompts; need ≥ 10 and ≥ 1")
    return train, test


def evaluate(benchmark: Path | str, *, policies: Iterable[str] = DEFAULT_POLICIES, encoder: str = MINILM,
             cache_dir: Path | str | None = None, artefact_dir: Path | str | None = None,
             progress: Progress | None = None, max_test: int | None = None, seed: int = 0,
             artefact_policy: str = "auto") -> dict:
    """artefact_policy: "auto" (cascade routing in the artefact when it beat one-call routing on train),
    "cascade-routing" (always, with the best multi-rung setting on train) or "routing" (never)."""
    progress = progress or Progress()
    policies = list(dict.fromkeys(policies))
    unknown = [p for p in policies if p not in ALL_POLICIES]
    if unknown:
        raise ConfigError(f"unknown policies {', '.join(unknown)}; known: {', '.join(ALL_POLICIES)}", field="--policies")
    from escalon.offline.evaluation import probing  # hybrid+cascade, the earlier fixed-probe cascade

    started = time.perf_counter()
    progress.step(f"loading {benchmark}")
    bench = load_benchmark(benchmark)
    notes = [n for n in [bench.split_note, *bench.notes] if n]
    if len(bench.models) < 2:
        raise ConfigError(f"{bench.path} holds one model ({bench.models[0]}); routing needs at least two")
    bench = keep_models_for_test(bench, notes)
    train, test = split_rows(bench, notes, max_test, seed)
    spread = np.nanmax(bench.costs, axis=1) - np.nanmin(bench.costs, axis=1)
    uniform_cost = bool(np.nanmax(spread) <= 1e-15)
    if uniform_cost:
        notes.append("every model costs the same on each prompt (no per-model prices): quality-only routing; "
                     "AIQ is the quality at one call's cost, and cascades pay for every rung they try")
    if not bench.has_responses():
        notes.append("no recorded responses: answer-based judges (cross-model agreement, sample consistency) "
                     "cannot run, so hybrid+cascade routes with one call per query and FrugalGPT is not applicable")

    enc = make_encoder(encoder)
    progress.step(f"embedding {bench.n} prompts with {enc.name} (cached)")
    x = cached_encode(enc, bench.texts, cache_dir)
    chars = bench.prompts["prompt"].str.len().to_numpy(dtype=float)
    families = [model_family(m) for m in bench.models]
    rungs = bench.rung_names()

    model, dev = fit_routing_model(x[train], chars[train], bench.tasks[train], bench.scores[train],
                                   bench.costs[train], rungs, families, enc.name, seed=seed,
                                   progress=progress.step)
    model.models = list(bench.models)
    pred = model.predict(x[test], chars[test])
    ctx = Context(bench, x, chars, train, test, model, pred, families, notes)

    weights, probe, probe_note = None, False, "no recorded responses: no probes"
    if "hybrid+cascade" in policies:
        weights, probe, probe_note = probing.fit_weights_and_probe(ctx, dev, progress, seed)
    if "hybrid+cascade" in policies:
        notes.append(f"hybrid+cascade probes: {probe_note}")

    results: list[PolicyResult] = []
    singles = baselines.single_points(ctx.scores, ctx.costs)
    if "single" in policies:
        for m, (c, q) in zip(bench.models, singles):
            results.append(PolicyResult(f"single:{m}", [(c, q, 1.0)], [0.0], "-"))
    if "random-mix" in policies:
        pts = baselines.random_mix_points(ctx.scores, ctx.costs, seed=seed)
        results.append(PolicyResult("random-mix", [(c, q, 1.0) for c, q in pts], list(range(len(pts))), "share"))
    if "oracle" in policies:
        c, q = baselines.oracle_point(ctx.scores, ctx.costs)
        results.append(PolicyResult("oracle", [(c, q, 1.0)], [0.0], "-", "knows every recorded score"))
    for name in ("taxonomy", "learned", "hybrid"):
        if name in policies:
            progress.step(f"{name}: λ sweep")
            results.append(route_result(name, ctx, policy_success(name, pred)))
    if "routellm-knn" in policies:
        progress.step("routellm-knn: neighbours of every test prompt")
        knn = baselines.knn_success(x[train], bench.scores[train], x[test])
        results.append(route_result("routellm-knn", ctx, knn, f"k={baselines.KNN_K} cosine neighbours"))
    if "routellm-mf" in policies:
        progress.step("routellm-mf: fitting the matrix factorisation on train")
        mf = baselines.MatrixFactorisation.fit(x[train], bench.scores[train], seed=seed)
        results.append(route_result("routellm-mf", ctx, mf.predict(x[test]),
                                    f"k={baselines.MF_DIM}, epochs={baselines.MF_EPOCHS}, L2 {baselines.MF_L2:g}, "
                                    f"Adam lr {baselines.MF_LEARNING_RATE:g}, batches of {baselines.MF_BATCH} prompts"))
    sweep = None
    if "hybrid+cascade" in policies:
        probe_results, sweep = probing.results(ctx, weights, probe, probe_note, uniform_cost, progress)
        results.extend(probe_results)
    if "frugalgpt" in policies:
        results.append(frugal_result(ctx, enc, cache_dir, progress))
    fitted = None
    if {"cascade-routing", "cascade-routing/ex-ante"} & set(policies):
        from escalon.offline.evaluation.cascade_routing_eval import cascade_routing_policies

        fitted, cr_results, cr_sweep = cascade_routing_policies(ctx, dev, policies, progress, seed, artefact_policy,
                                                                uniform_cost)
        results.extend(cr_results)
        sweep = cr_sweep or sweep

    report = build_report(ctx, results, singles, uniform_cost)
    report["budget_sweep"] = sweep
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["judge_weights"] = weights.to_dict() if weights else None
    report["cascade_routing"] = None if fitted is None else {"note": fitted.note, "used_by_artefact": fitted.use,
                                                              **fitted.dev}
    report["familiarity"] = {k: v for k, v in vars(model.familiarity).items()}
    if artefact_dir is not None:
        from escalon.router.artefact import source_fingerprint, write_artefact

        progress.step(f"writing the artefact to {artefact_dir}")
        write_artefact(artefact_dir, model, weights, probe, source_fingerprint(bench.path), notes,
                       estimator=fitted.estimator if fitted is not None and fitted.use else None)
        report["artefact"] = str(artefact_dir)
    return report


FRUGAL_MAX_TRAIN_ANSWERS = 60_000


def frugal_result(ctx: Context, enc, cache_dir, progress: Progress) -> PolicyResult:
    bench = ctx.bench
    if not bench.has_responses():
        return PolicyResult("frugalgpt", [], [], "tau", "not applicable: no recorded responses", applicable=False)
    # Answers are embedded with the static encoder (a 64-d static model, ~10k texts/s): a transformer over every
    # recorded answer (335k on mmlu-pro-28) would take most of an hour on 2 cores. FrugalGPT's own scorer is a
    # fine-tuned DistilBERT; this is its cheap stand-in, fitted the same way (correct or not, per answer).
    answer_enc = make_encoder(STATIC)
    texts = bench.texts
    progress.step(f"frugalgpt: embedding recorded answers with {answer_enc.name}, fitting the answer scorer")
    R = len(bench.models)
    train_ok, test_ok = answerable(bench, ctx.train), answerable(bench, ctx.test)
    if train_ok.sum() > FRUGAL_MAX_TRAIN_ANSWERS:  # a sample of training answers fits the scorer as well
        keep = np.random.default_rng(0).random(train_ok.shape) < FRUGAL_MAX_TRAIN_ANSWERS / train_ok.sum()
        train_ok = train_ok & keep

    def feats(rows, ok):
        q, r = np.nonzero(ok)
        answers = [bench.responses[rows[i], j] for i, j in zip(q, r)]
        xq = cached_encode(answer_enc, [texts[rows[i]] for i in q], cache_dir) if len(q) else None
        xa = cached_encode(answer_enc, answers, cache_dir) if answers else None
        if xa is None:
            return q, r, np.zeros((0, 1))
        lengths = np.array([len(a) for a in answers], dtype=float)
        return q, r, baselines.AnswerScorer.features(xq, xa, lengths, r, R)

    q, r, f = feats(ctx.train, train_ok)
    scorer = baselines.AnswerScorer.fit(f, bench.scores[ctx.train[q], r] >= 0.5) if len(q) else None
    if scorer is None:
        return PolicyResult("frugalgpt", [], [], "tau", "not applicable: too few recorded training answers "
                            "of both outcomes", applicable=False)
    g = np.full((len(ctx.test), R), np.nan)
    q, r, f = feats(ctx.test, test_ok)
    if len(q):
        g[q, r] = scorer.score(f)
    train_scores, train_costs = bench.scores[ctx.train], bench.costs[ctx.train]
    stats = {j: (float(np.nanmean(train_costs[:, j])), float(np.nanmean(train_scores[:, j]))) for j in range(R)}
    ladder = [j for j in sorted(stats, key=lambda j: stats[j]) if (stats[j][0], stats[j][1]) in
              frontier(list(stats.values()))]
    prior = np.array([stats[j][1] for j in range(R)])
    pts = baselines.frugal_points(ladder, g, test_ok, ctx.scores, ctx.costs, prior=prior)
    return PolicyResult("frugalgpt", pts, list(baselines.FRUGAL_THRESHOLDS), "tau",
                        f"ladder {' → '.join(bench.models[j] for j in ladder)}; a rung without a recorded answer "
                        "is skipped; a query without any is routed by the rungs' training accuracy vs τ")


def build_report(ctx: Context, results: list[PolicyResult], singles, uniform_cost: bool) -> dict:
    bench = ctx.bench
    best = max(range(len(singles)), key=lambda j: (singles[j][1], -singles[j][0]))
    best_cost, best_quality = singles[best]
    lo, hi = min(c for c, _ in singles), max(c for c, _ in singles)
    policies = {}
    for res in results:
        pts = [(c, q) for c, q, _ in res.points]
        entry = {"applicable": res.applicable, "note": res.note, "knob": res.knob_name,
                 "points": [{"knob": k, "cost_usd": c, "quality": q, "calls_per_query": n}
                            for k, (c, q, n) in zip(res.knob, res.points)]}
        if pts:
            match = cost_to_match(pts, best_quality)
            calls_at_match = next((n for c, q, n in res.points if match is not None and c == match
                                   and q >= best_quality - 1e-9), None)
            entry.update({
                "aiq": aiq(pts, lo, hi),
                "frontier": [list(p) for p in frontier(pts)],
                "hull": [list(p) for p in upper_hull(pts)],
                "quality_at_best_single_cost": quality_at_cost(pts, best_cost),
                "cost_to_match_best_single_usd": match,
                "cost_to_match_best_single_pct": 100 * match / best_cost if match is not None and best_cost else None,
                "calls_per_query_at_match": calls_at_match,
                "max_quality": max(q for _, q in pts),
                "calls_per_query": [n for _, _, n in res.points],
            })
        policies[res.name] = entry
    non_oracle = {k: v for k, v in policies.items() if k != "oracle" and v.get("aiq") is not None}
    ranking = sorted(non_oracle, key=lambda k: -non_oracle[k]["aiq"])
    return {
        "format": FORMAT,
        "benchmark": bench.name,
        "path": str(bench.path),
        "models": bench.models,
        "families": ctx.families,
        "train_prompts": int(len(ctx.train)),
        "test_prompts": int(len(ctx.test)),
        "has_responses": bench.has_responses(),
        "uniform_cost": uniform_cost,
        "notes": ctx.notes,
        "best_single": {"model": bench.models[best], "quality": best_quality, "cost_usd": best_cost},
        "aiq_cost_range_usd": [lo, hi],
        "aiq_ranking_non_oracle": ranking,
        "policies": policies,
    }
