"""Cascade routing (docs/cascade-routing.md): routing and cascading as one decision, repeated after every answer.

State: a query, the rungs already run and their answers. For every rung the estimator gives a quality
estimate q̂ with an uncertainty — post-hoc for rungs that answered; for rungs not yet run, the routing
model's ex-ante ŝ recalibrated and updated by what the answers so far say about the query (σ: how far it
moves once the rung answers; τ: how far the best answer's estimate moves when more answers arrive). The
planner scores every set S ⊇ run of rungs by E[max_{i∈S} q_i] − λ·Σ_{i∈S∖run} ĉ_i (independent normals,
E[max] by Clark's moment matching), stops when the best S is what already ran, and otherwise runs the
cheapest unrun rung of the best S. The answer returned is the run rung with the highest post-hoc q̂.

Everything here is batch-first ([n queries, R rungs] arrays) so that `escalon eval` simulates thousands
of queries at once and the Router API (n = 1) takes exactly the same decisions. Fitting lives offline
(escalon.offline.evaluation.cascade_routing_fit); this module only applies fitted coefficients.

Post-hoc features of a run rung i: its ex-ante logit, how many of the other answers agree with its answer
key (escalon.answer_keys) and their summed ŝ, the same for disagreeing answers, agreement from another
family, answer length, whether i holds the heaviest cluster, the largest ŝ agreeing and disagreeing, how
many ran, a per-rung bias and a per-rung weight on the agreeing weight, and — for code answers to a prompt
that states tests (escalon.answer_keys.answer_evidence) — whether it was executed, the share of tests it
passed and whether it passed them all. Of an unrun rung j: its ex-ante
logit, how many rungs ran, the heaviest cluster's weight and share, distinct answers, whether all agree, the
best run rung's post-hoc estimate, the mean ŝ of what ran, a per-rung bias and weight. Both also see the
query's task probabilities (the context).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from scipy.special import expit, ndtr

DEPTH = 4  # at most this many rungs per query
TOP_K = 5  # candidate unrun rungs considered per step (best q̂ − λĉ first)
EPS = 1e-4

RUN_FEATURES = ("logit_s", "n_agree", "w_agree", "n_disagree", "w_disagree", "cross_family_agree",
                "log_len", "in_top_cluster", "max_s_agree", "max_s_disagree", "n_run", "checked", "check_pass",
                "check_full")
UNRUN_FEATURES = ("logit_s", "n_run", "top_weight", "top_share", "n_distinct", "best_run_q", "mean_run_s",
                  "agree_all")
# the feature each rung gets its own weight for: how much the other answers back it / how sure the best run is
INTERACTION = {"run": RUN_FEATURES.index("w_agree"), "unrun": UNRUN_FEATURES.index("best_run_q")}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class AnswerState:
    """What the cascade has bought for n queries: which rungs ran and what they said.

    codes: [n, R] int, the answer key's id within its query (equal ids = same answer), −1 = none.
    lengths: [n, R] answer characters (0 where not run).
    checks: [n, R] share of the prompt's tests the answer passed when executed, NaN = not checked (no tests
    in the prompt, not code, or not run); None = nothing checked."""

    run: np.ndarray
    codes: np.ndarray
    lengths: np.ndarray
    checks: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, r: int) -> AnswerState:
        return cls(np.zeros((n, r), bool), np.full((n, r), -1, np.int64), np.zeros((n, r)))

    def with_answer(self, rows: np.ndarray, rungs: np.ndarray, codes: np.ndarray, lengths: np.ndarray,
                    checks: np.ndarray | None = None) -> AnswerState:
        run, c, ln = self.run.copy(), self.codes.copy(), self.lengths.copy()
        run[rows, rungs] = True
        c[rows, rungs] = codes
        ln[rows, rungs] = lengths
        ch = self.checks
        if checks is not None or ch is not None:
            ch = np.full(run.shape, np.nan) if ch is None else ch.copy()
            ch[rows, rungs] = np.nan if checks is None else checks
        return AnswerState(run, c, ln, ch)


def encode_keys(keys: list[list[str | None]]) -> np.ndarray:
    """Answer keys per query and rung → ids comparable within a query (−1 for None)."""
    out = np.full((len(keys), len(keys[0]) if keys else 0), -1, np.int64)
    for q, row in enumerate(keys):
        seen: dict[str, int] = {}
        for r, key in enumerate(row):
            if key is not None:
                out[q, r] = seen.setdefault(key, len(seen))
    return out


def state_features(ex_ante: np.ndarray, state: AnswerState, cross_family: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per (query, rung): the post-hoc features as if the rung ran ([n, R, len(RUN_FEATURES)]), and the
    cluster summary the unrun features use ([n, 4]: top weight, top share, distinct answers, all agree)."""
    run, codes = state.run, state.codes
    n, R = codes.shape
    valid = run & (codes >= 0)
    s = np.clip(ex_ante, EPS, 1 - EPS)
    # compare every rung with the few that ran (slots), not with all R: O(R·depth) instead of O(R²)
    slots = max(int(run.sum(-1).max(initial=0)), 1)
    order = np.argsort(~run, axis=1, kind="stable")[:, :slots]  # [n, D] rungs that ran, first
    present = np.take_along_axis(run, order, 1)
    codes_s = np.take_along_axis(codes, order, 1)
    valid_s = present & (codes_s >= 0)
    s_s = np.take_along_axis(s, order, 1)[:, None, :]  # [n, 1, D]
    same = (codes[:, :, None] == codes_s[:, None, :]) & valid[:, :, None] & valid_s[:, None, :]
    is_self = order[:, None, :] == np.arange(R)[None, :, None]
    others = valid_s[:, None, :] & ~is_self
    agree = same & others
    disagree = others & ~same
    n_agree = agree.sum(-1)
    w_agree = (agree * s_s).sum(-1)
    n_dis = disagree.sum(-1)
    w_dis = (disagree * s_s).sum(-1)
    cross = (agree & cross_family[np.arange(R)[None, :, None], order[:, None, :]]).any(-1)
    max_agree = np.where(agree, s_s, 0).max(-1)
    max_dis = np.where(disagree, s_s, 0).max(-1)
    # clusters: the weight of the answer each rung gave, summed over the rungs that gave it
    cluster_w = np.where(valid, (same * s_s).sum(-1), 0.0)  # [n, R]: weight of rung i's cluster (incl. i)
    top_w = cluster_w.max(-1)
    in_top = valid & (cluster_w >= top_w[:, None] - 1e-12) & (top_w[:, None] > 0)
    n_run = run.sum(-1)
    cluster_n = np.where(valid, same.sum(-1), 0)
    top_share = cluster_n.max(-1) / np.maximum(n_run, 1)
    equal = (codes_s[:, :, None] == codes_s[:, None, :]) & valid_s[:, :, None] & valid_s[:, None, :]
    earlier = np.tril(np.ones((slots, slots), bool), -1)[None]
    distinct = (valid_s & ~(equal & earlier).any(-1)).sum(-1)
    agree_all = (n_run >= 2) & (top_share >= 1.0 - 1e-12)
    log_len = np.log1p(state.lengths) / 10.0
    checks = np.full(s.shape, np.nan) if state.checks is None else np.where(run, state.checks, np.nan)
    checked = ~np.isnan(checks)
    passed = np.nan_to_num(checks, nan=0.0)
    run_x = np.stack([logit(s), n_agree, w_agree, n_dis, w_dis, cross, log_len, in_top, max_agree, max_dis,
                      np.broadcast_to((n_run - 1)[:, None], s.shape), checked, passed,
                      checked & (passed >= 1.0 - 1e-9)], axis=-1).astype(float)
    summary = np.stack([top_w, top_share, distinct, agree_all], axis=-1).astype(float)
    return run_x, summary


def unrun_summary(ex_ante: np.ndarray, state: AnswerState, q_run: np.ndarray, summary: np.ndarray) -> np.ndarray:
    """What an unrun rung's estimate sees of the answers so far ([n, len(UNRUN_FEATURES) − 1])."""
    n_run = state.run.sum(-1).astype(float)
    best_run = np.where(state.run, q_run, -np.inf).max(-1)
    best_run = np.where(np.isfinite(best_run), best_run, 0.0)
    mean_s = np.where(state.run, ex_ante, 0).sum(-1) / np.maximum(n_run, 1)
    return np.stack([n_run, summary[:, 0], summary[:, 1], summary[:, 2], best_run, mean_s, summary[:, 3]], axis=-1)


@dataclass
class QualityEstimator:
    """Fitted logistic models for run and unrun rungs, plus σ of the unrun estimate per depth and rung.
    `posthoc=False` is the ex-ante ablation: q̂ stays ŝ whatever the answers say."""

    rungs: list[str]
    families: list[str]
    run_coef: np.ndarray  # [len(RUN_FEATURES) + R]
    run_bias: float
    unrun_coef: np.ndarray  # [len(UNRUN_FEATURES) + R]
    unrun_bias: float
    sigma: np.ndarray  # [DEPTH, R]: σ of an unrun rung's estimate when d rungs have run
    tau: np.ndarray = field(default_factory=lambda: np.zeros((DEPTH + 1, DEPTH + 1)))  # [d, k]: how far the best
    # run rung's estimate moves when k more rungs answer (what a second opinion is worth)
    posthoc: bool = True
    scale: dict = field(default_factory=dict)  # feature means/stds, applied before the coefficients
    depth: int = DEPTH  # most rungs per query (1: one-call routing on the calibrated estimates)

    @property
    def cross_family(self) -> np.ndarray:
        f = np.array(self.families)
        return f[:, None] != f[None, :]

    def estimate(self, ex_ante: np.ndarray, state: AnswerState, context: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """q̂ and σ for every (query, rung) in this state; context: [n, C] per-query features (the taxonomy's
        task probabilities) the estimators were fitted with."""
        n, R = ex_ante.shape
        d = np.minimum(state.run.sum(-1), DEPTH - 1)
        sigma = self.sigma[d]  # [n, R]
        if not self.posthoc:
            return ex_ante.copy(), np.where(state.run, 0.0, sigma)
        if not state.run.any():  # nothing answered yet: the ex-ante estimates, calibrated by the unrun model
            per_query = np.zeros((n, len(UNRUN_FEATURES) - 1))
            q_run = np.zeros((n, R))
        else:
            run_x, summary = state_features(ex_ante, state, self.cross_family)
            q_run = self._apply(run_x, self.run_coef, self.run_bias, "run", context)
            per_query = unrun_summary(ex_ante, state, q_run, summary)
        unrun_x = np.concatenate([logit(ex_ante)[..., None], np.broadcast_to(per_query[:, None, :],
                                                                             (n, R, per_query.shape[1]))], axis=-1)
        q_unrun = self._apply(unrun_x, self.unrun_coef, self.unrun_bias, "unrun", context)
        q = np.where(state.run, q_run, q_unrun)
        return q, np.where(state.run, 0.0, sigma)

    def _apply(self, x: np.ndarray, coef: np.ndarray, bias: float, which: str, context: np.ndarray | None = None
               ) -> np.ndarray:
        """Logit = scaled features · w + per-rung bias + per-rung weight × the interaction feature + context · v."""
        f, R = x.shape[-1], x.shape[-2]
        mean, std = (np.asarray(v) for v in self.scale.get(which, (np.zeros(f), np.ones(f))))
        scaled = (x - mean) / std
        z = scaled @ coef[:f] + coef[f:f + R][None, :] + bias
        z = z + coef[f + R:f + 2 * R][None, :] * scaled[..., INTERACTION[which]]
        if context is not None and len(coef) > f + 2 * R:
            z = z + (context @ coef[f + 2 * R:])[:, None]
        return expit(z)

    def to_dict(self) -> dict:
        return {"rungs": self.rungs, "families": self.families, "run_coef": self.run_coef.tolist(),
                "run_bias": self.run_bias, "unrun_coef": self.unrun_coef.tolist(), "unrun_bias": self.unrun_bias,
                "sigma": self.sigma.tolist(), "tau": self.tau.tolist(), "posthoc": self.posthoc, "depth": self.depth,
                "scale": {k: [list(map(float, m)), list(map(float, s))] for k, (m, s) in self.scale.items()},
                "features": {"run": list(RUN_FEATURES), "unrun": list(UNRUN_FEATURES)}}

    @classmethod
    def from_dict(cls, data: dict) -> QualityEstimator:
        """An artefact fitted before a feature was added reads with weight 0 on it (it behaves as it did);
        one that names a feature this code does not know must be refitted."""
        stored = data.get("features", {})
        scale = {k: (np.array(m, float), np.array(sd, float)) for k, (m, sd) in data.get("scale", {}).items()}
        coefs = {}
        for which, current in (("run", RUN_FEATURES), ("unrun", UNRUN_FEATURES)):
            names = list(stored.get(which, ()))
            if not set(names) <= set(current) or current[INTERACTION[which]] not in names:
                raise ValueError(f"the estimator was fitted on other {which} features ({', '.join(names)}); "
                                 "re-run `escalon eval` to refit it")
            coefs[which], scale_of = _remap(np.array(data[f"{which}_coef"], float), scale.get(which), names,
                                            current)
            if scale_of is not None:
                scale[which] = scale_of
        return cls(list(data["rungs"]), list(data["families"]), coefs["run"], float(data["run_bias"]),
                   coefs["unrun"], float(data["unrun_bias"]), np.array(data["sigma"], float),
                   np.array(data["tau"], float), bool(data.get("posthoc", True)), scale,
                   int(data.get("depth", DEPTH)))


def _remap(coef: np.ndarray, scale, names: list[str], current: tuple[str, ...]):
    """Coefficients [features, R biases, R interaction weights, context] in `names` order → `current` order."""
    if names == list(current):
        return coef, None
    f = len(names)
    out = np.zeros(len(current) + len(coef) - f)
    mean, std = np.zeros(len(current)), np.ones(len(current))
    for i, name in enumerate(names):
        j = current.index(name)
        out[j] = coef[i]
        if scale is not None:
            mean[j], std[j] = scale[0][i], scale[1][i]
    out[len(current):] = coef[f:]
    return out, (mean, std)


def expected_max(base: np.ndarray, mu: np.ndarray, sigma: np.ndarray, member: np.ndarray,
                 base_sigma: np.ndarray | None = None) -> np.ndarray:
    """E[max(B, X_1..X_k)] for independent B ~ N(base, base_sigma²), X_j ~ N(mu_j, sigma_j²) over the members
    (Clark 1961: fold one normal at a time, matching the first two moments). base: [...], the rest [..., k]."""
    m = base.astype(float)
    v = np.zeros_like(m) if base_sigma is None else np.broadcast_to(base_sigma, m.shape).astype(float) ** 2
    for j in range(mu.shape[-1]):
        m2, v2 = mu[..., j], sigma[..., j] ** 2
        theta = np.sqrt(v + v2)
        safe = np.maximum(theta, 1e-12)
        a = (m - m2) / safe
        cdf, pdf = ndtr(a), np.exp(-0.5 * a * a) / np.sqrt(2 * np.pi)
        new_m = np.where(theta > 1e-12, m * cdf + m2 * (1 - cdf) + theta * pdf, np.maximum(m, m2))
        second = (m * m + v) * cdf + (m2 * m2 + v2) * (1 - cdf) + (m + m2) * theta * pdf
        new_v = np.where(theta > 1e-12, np.maximum(second - new_m ** 2, 0.0), 0.0)
        take = member[..., j]
        m, v = np.where(take, new_m, m), np.where(take, new_v, v)
    return m


def _subsets(k: int, most: int) -> np.ndarray:
    """Every subset of k candidate slots of size 0..most, as a [n_sets, k] bool mask (row 0: the empty set)."""
    rows = [np.zeros(k, bool)]
    for size in range(1, min(k, most) + 1):
        for combo in combinations(range(k), size):
            mask = np.zeros(k, bool)
            mask[list(combo)] = True
            rows.append(mask)
    return np.array(rows)


@dataclass(frozen=True)
class Step:
    next_rung: np.ndarray  # [n] rung index to run next, −1 = stop
    value: np.ndarray  # [n] the best set's value
    best_set: list[tuple[int, ...]]  # per query: the unrun rungs of the best set (for the route's reason)


def plan_step(q: np.ndarray, sigma: np.ndarray, run: np.ndarray, cost: np.ndarray, lam: float,
              allowed: np.ndarray | None = None, bound: np.ndarray | None = None,
              remaining: np.ndarray | None = None, depth: int = DEPTH, top_k: int = TOP_K,
              tau: np.ndarray | None = None) -> Step:
    """One decision for n queries. cost: [n, R] predicted cost in λ's units; bound/remaining (optional): each
    rung's upper-bound cost and the budget left, so no chosen set can overspend; tau [d, k] (optional): the
    spread of the best run rung's estimate once k more rungs answer."""
    n, R = q.shape
    ok = ~run if allowed is None else (~run & allowed)
    if bound is not None and remaining is not None:
        ok &= bound <= remaining[:, None] + 1e-15
    k = min(top_k, R)
    utility = np.where(ok, q - lam * cost, -np.inf)
    cand = np.argsort(-utility, axis=1, kind="stable")[:, :k]  # [n, k]
    cand_ok = np.take_along_axis(ok, cand, 1)
    n_run = run.sum(-1)
    sets = _subsets(k, depth)  # [S, k]
    member = sets[None, :, :] & cand_ok[:, None, :]  # [n, S, k]
    valid_set = (member.sum(-1) == sets.sum(-1)[None]) & ((sets.sum(-1)[None] + n_run[:, None]) <= depth)
    mu = np.take_along_axis(q, cand, 1)[:, None, :]
    sd = np.take_along_axis(sigma, cand, 1)[:, None, :]
    c = np.take_along_axis(cost, cand, 1)
    base = np.where(run, q, -np.inf).max(-1)
    has_base = np.isfinite(base)
    start = np.where(has_base, base, -1e9)[:, None] * np.ones((1, len(sets)))
    base_sd = None
    if tau is not None:
        d = np.minimum(n_run, tau.shape[0] - 1)[:, None]
        kk = np.minimum(sets.sum(-1), tau.shape[1] - 1)[None, :]
        base_sd = np.where(has_base[:, None], tau[d, kk], 0.0)
    value = expected_max(start, np.broadcast_to(mu, member.shape), np.broadcast_to(sd, member.shape), member,
                         base_sd)
    value = value - lam * (member * c[:, None, :]).sum(-1)
    if bound is not None and remaining is not None:
        b = np.take_along_axis(bound, cand, 1)
        valid_set &= (member * b[:, None, :]).sum(-1) <= remaining[:, None] + 1e-15
    valid_set[:, 0] = has_base  # stopping is a choice only once something ran
    value = np.where(valid_set, value, -np.inf)
    best = value.argmax(-1)
    chosen = member[np.arange(n), best]  # [n, k]
    masked_cost = np.where(chosen, c, np.inf)
    first = masked_cost.argmin(-1)
    nxt = np.where(chosen.any(-1), cand[np.arange(n), first], -1)
    nxt = np.where(np.isfinite(value[np.arange(n), best]), nxt, -1)
    best_sets = [tuple(int(cand[i, j]) for j in np.flatnonzero(chosen[i])) for i in range(n)]
    return Step(nxt, value[np.arange(n), best], best_sets)


def decide(est: QualityEstimator, ex_ante: np.ndarray, state: AnswerState, cost: np.ndarray, lam: float,
           context: np.ndarray | None = None, allowed: np.ndarray | None = None, bound: np.ndarray | None = None,
           remaining: np.ndarray | None = None, depth: int | None = None, top_k: int = TOP_K) -> Step:
    """The next rung (or stop) for n queries, by the estimator's planner."""
    depth = depth or est.depth
    q, sigma = est.estimate(ex_ante, state, context)
    return plan_step(q, sigma, state.run, cost, lam, allowed, bound, remaining, depth, top_k,
                     est.tau if est.posthoc else None)


def choose_answer(q: np.ndarray, run: np.ndarray) -> np.ndarray:
    """The run rung with the highest post-hoc estimate, per query (−1 where nothing ran)."""
    masked = np.where(run, q, -np.inf)
    return np.where(run.any(-1), masked.argmax(-1), -1)


class Stepper:
    """Cascade routing for one request, step by step, over the artefact's columns: the Router's Cascade asks
    `next()` which rung to run, reports each answer with `observe()` (or `failed()`), and finally takes
    `best()`. The arrays are those `escalon eval` simulates with (n = 1), so both take the same decisions."""

    def __init__(self, estimator: QualityEstimator, names: list[str | None], ex_ante: np.ndarray, cost: np.ndarray,
                 lam: float, context: np.ndarray | None = None, depth: int | None = None, top_k: int = TOP_K) -> None:
        """names: per artefact column, the routed rung serving it (None: not routed here, never run)."""
        self.estimator = estimator
        self.names = names
        self.ex_ante = ex_ante[None, :].astype(float)
        self.cost = cost[None, :].astype(float)
        self.lam = lam
        self.context = None if context is None else context[None, :]
        self.depth, self.top_k = depth or estimator.depth, top_k
        self.allowed = np.array([n is not None for n in names])[None, :]
        self.state = AnswerState.empty(1, len(names))
        self.keys: dict[str, int] = {}
        self.bound: np.ndarray | None = None
        self.remaining: np.ndarray | None = None
        self.last_value = float("nan")
        self.last_set: tuple[int, ...] = ()
        self._decided: Step | None = None

    def limit_budget(self, bound: list[float], budget: float) -> None:
        """Upper-bound cost per column and the request's budget: no planned set may exceed what is left."""
        self.bound = np.array(bound, float)[None, :]
        self.remaining = np.array([budget], float)
        self._decided = None

    def estimates(self) -> tuple[np.ndarray, np.ndarray]:
        q, sigma = self.estimator.estimate(self.ex_ante, self.state, self.context)
        return q[0], sigma[0]

    def _decide(self) -> Step:
        """The decision in the current state, made once: a budget, a failed rung or an answer forgets it."""
        if self._decided is None:
            self._decided = decide(self.estimator, self.ex_ante, self.state, self.cost, self.lam, self.context,
                                   self.allowed, self.bound, self.remaining, self.depth, self.top_k)
        return self._decided

    def first_set(self) -> tuple[str, ...]:
        """The rungs of the set the planner would buy now (the route's reason names them)."""
        return tuple(self.names[c] for c in self._decide().best_set[0])

    def next(self) -> str | None:
        if int(self.state.run.sum()) >= self.depth:
            return None
        step = self._decide()
        self.last_value, self.last_set = float(step.value[0]), step.best_set[0]
        column = int(step.next_rung[0])
        return None if column < 0 else self.names[column]

    def _column(self, rung: str) -> int:
        return self.names.index(rung)

    def observe(self, rung: str, key: str | None, length: int, cost_bound: float = 0.0,
                check: float = float("nan")) -> None:
        """check: the share of the prompt's tests the answer passed (NaN: not executed)."""
        code = -1 if key is None else self.keys.setdefault(key, len(self.keys))
        column = self._column(rung)
        checks = None if np.isnan(check) and self.state.checks is None else np.array([check])
        self.state = self.state.with_answer(np.array([0]), np.array([column]), np.array([code]),
                                            np.array([float(length)]), checks)
        if self.remaining is not None:
            self.remaining = self.remaining - cost_bound
        self._decided = None

    def failed(self, rung: str) -> None:
        """A rung that could not answer is not planned again for this request."""
        self.allowed[0, self._column(rung)] = False
        self._decided = None

    def best(self) -> tuple[str | None, float]:
        """The answered rung with the highest post-hoc estimate, and that estimate."""
        if not self.state.run.any():
            return None, 0.0
        q, _ = self.estimates()
        column = int(choose_answer(q[None, :], self.state.run)[0])
        return self.names[column], float(q[column])
