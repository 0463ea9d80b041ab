"""The routing policies built on a RoutingModel: taxonomy-only, learned-only, hybrid, and hybrid+cascade.

All four choose with one rule — per query the rung maximising ŝ − λ·ĉ/scale, where ŝ is the policy's
success estimate (Φ, the predictor, or the hybrid's pick of the two) and ĉ the predicted cost; λ is the
cost–quality knob (0 = best predicted quality, large = cheapest).

hybrid+cascade adds probes: when answers can be judged (rungs of two families can answer), it first asks up
to PROBES cheaper rungs — of different families, best utility first — and then the target. Every answer is
judged by the panel: cross-model agreement, sample consistency and the router's predicted success, combined
with the judge weights fitted on train. A probe's answer is accepted when its confidence reaches
τ = ŝ_target − λ·ĉ_target/scale: what escalating would be worth at this λ. So the knob sets both the target
and the acceptance threshold, and the plan is exactly what the Router API's Cascade runs.

`build_plan` is the one place a plan is made: the evaluation harness calls it on precomputed predictions,
the Router (HybridPolicy) on a fresh embedding of the request, so both take the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from escalon.judging import JudgeWeights
from escalon.registry import Catalogue
from escalon.router.cascade_routing import QualityEstimator, Stepper
from escalon.router.embedding import require_encoder
from escalon.router.policy import Label, RoutePlan, RouteQuery
from escalon.router.routing_model import Prediction, RoutingModel
from escalon.router.taxonomy import COMPLEXITY, answer_format
from escalon.tokens import estimate_tokens

PROBES = 2
POLICIES = ("taxonomy", "learned", "hybrid", "hybrid+cascade")


def lambda_for_threshold(threshold: float) -> float:
    """A request's quality knob τ ∈ [0, 1] as λ: 10^(1 − 4τ) (τ 0.5 → 0.1, 0.9 → 0.0025), τ ≥ 0.999 → 0."""
    return 0.0 if threshold >= 0.999 else 10 ** (1 - 4 * threshold)


@dataclass(frozen=True)
class PlanChoice:
    rungs: tuple[int, ...]  # column indices, in the order the cascade tries them
    threshold: float
    target: int


def best_case_confidence(weights: JudgeWeights | None, predicted: float, cross_model_possible: bool) -> float:
    """The highest confidence the weighted panel could give a one-sample answer: every judge that can run
    agrees. Without fitted weights (a mean of judges) it is 1."""
    if weights is None:
        return 1.0
    z = weights.bias
    for judge, (ran, skipped) in weights.weights.items():
        if judge == "predicted_success":
            z += ran * predicted
        elif judge == "cross_model" and cross_model_possible:
            z += max(ran, skipped)
        else:
            z += skipped
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def build_plan(success: np.ndarray, cost: np.ndarray, lam: float, scale: float, families: list[str],
               probe: bool, allowed: np.ndarray | None = None, weights: JudgeWeights | None = None) -> PlanChoice:
    """One query: the target rung at λ and, when probing, the cheaper rungs asked first. Probes are dropped
    when even their best case (every judge agreeing) could not reach the acceptance threshold."""
    utility = success - lam * cost / scale - 1e-9 * cost / scale
    if allowed is not None:
        utility = np.where(allowed, utility, -np.inf)
    target = int(utility.argmax())
    escalation_value = float(success[target] - lam * cost[target] / scale)
    if not probe:
        return PlanChoice((target,), 0.0, target)
    cheaper = [r for r in np.argsort(-utility) if cost[r] < cost[target] and np.isfinite(utility[r])]
    probes: list[int] = []
    for r in cheaper:
        if len(probes) == PROBES:
            break
        if probes and families[r] == families[probes[0]] and len({families[p] for p in probes}) < 2:
            continue  # a second probe from the first one's family gives no cross-model evidence
        probes.append(int(r))
    threshold = float(min(1.0, max(0.0, escalation_value)))
    ordered = sorted(probes, key=lambda r: (cost[r], r))
    reachable = [best_case_confidence(weights, float(success[r]), any(families[p] != families[r] for p in ordered[:k]))
                 >= threshold for k, r in enumerate(ordered)]
    if not any(reachable):
        return PlanChoice((target,), 0.0, target)
    return PlanChoice(tuple(ordered) + (target,), threshold, target)


def policy_success(policy: str, pred: Prediction) -> np.ndarray:
    if policy == "taxonomy":
        return pred.phi
    if policy == "learned":
        return pred.learned
    return pred.hybrid


class HybridPolicy:
    """The Router API's policy when an artefact is loaded: embed, predict, build_plan (hybrid+cascade)."""

    name = "hybrid+cascade"

    def __init__(self, model: RoutingModel, encoder, judge_weights: JudgeWeights | None, probe: bool,
                 version: str = "", estimator: QualityEstimator | None = None) -> None:
        require_encoder(model.encoder, encoder)
        self.model = model
        self.encoder = encoder
        self.judge_weights = judge_weights
        self.probe = probe
        self.version = version
        self.estimator = estimator  # cascade routing's post-hoc estimates (None: one-call routing / probes)

    def predict(self, prompt: str) -> tuple[np.ndarray, Prediction]:
        x = self.encoder.encode([prompt])
        return x, self.model.predict(x, np.array([len(prompt)], dtype=float))

    def plan(self, query: RouteQuery, catalogue: Catalogue, rungs: list[str]) -> RoutePlan:
        if query.pin_rung:
            return RoutePlan((query.pin_rung,), "pinned", f"the request pinned rung {query.pin_rung}", query.threshold)
        x, pred = self.predict(query.prompt)
        lam = lambda_for_threshold(query.threshold)
        if self.estimator is not None:
            stepped = self._cascade_routing_plan(query, catalogue, rungs, x, pred, lam)
            if stepped is not None:
                return stepped
        success, cost, families = self._columns(pred, catalogue, rungs, query.prompt)
        allowed = None
        if query.max_cost_usd is not None:  # leave out rungs whose one answer could already exceed the budget
            tokens = estimate_tokens(query.prompt)
            fits = np.array([catalogue.get(n).cost(tokens, query.max_tokens or catalogue.get(n).max_tokens)
                             <= query.max_cost_usd for n in rungs])
            allowed = fits if fits.any() else None  # none fits: the cascade refuses with a clear error
        choice = build_plan(success, cost, lam, self.model.cost_scale, families, self.probe and len(rungs) > 1,
                            allowed=allowed, weights=self.judge_weights)
        path = "taxonomy" if pred.familiar[0] else "learned"
        names = tuple(rungs[r] for r in choice.rungs)
        reason = (f"{path} path ({pred.why(0, self.model)}); λ={lam:.4g} from τ={query.threshold:.2f}: target "
                  f"{rungs[choice.target]} (ŝ={success[choice.target]:.2f}, ĉ=${cost[choice.target]:.6f})")
        reason += "; predicted success " + ", ".join(f"{n} {success[r]:.2f}" for n, r in zip(names, choice.rungs))
        if len(names) > 1:
            reason += f"; probes {', '.join(names[:-1])} accepted at confidence ≥ {choice.threshold:.2f}"
        return RoutePlan(
            names, f"{self.name}/{path}", reason, choice.threshold if len(names) > 1 else query.threshold,
            labels=self.labels(x, pred, query.prompt),
            predicted_success={rungs[r]: float(success[r]) for r in choice.rungs},
            judge_weights=self.judge_weights,
            min_agreeing_share=0.0 if self.judge_weights is not None else 2 / 3,
        )

    def _cascade_routing_plan(self, query: RouteQuery, catalogue: Catalogue, rungs: list[str], x: np.ndarray,
                              pred: Prediction, lam: float) -> RoutePlan | None:
        """Cascade routing over the artefact's columns that a routed rung serves (by name, else by model);
        None when no routed rung maps to a column (then one-call routing over the catalogue's prices)."""
        by_name = {name: name for name in rungs}
        by_model = {catalogue.get(name).model: name for name in rungs}
        names = [by_name.get(r, by_model.get(m)) for r, m in
                 zip(self.model.rungs, self.model.models or [None] * len(self.model.rungs))]
        if not any(names):
            return None
        stepper = Stepper(self.estimator, names, pred.hybrid[0], pred.cost[0] / self.model.cost_scale, lam,
                          pred.p_task[0])
        best_set = stepper.first_set()
        if not best_set:
            return None
        path = "taxonomy" if pred.familiar[0] else "learned"
        left_out = [r for r in rungs if r not in names]
        reason = (f"cascade routing ({path} path: {pred.why(0, self.model)}); λ={lam:.4g} from τ={query.threshold:.2f}; "
                  f"first best set {', '.join(best_set)}; each next rung is chosen from the answers so far")
        if left_out:
            reason += f"; not in the artefact, so not planned: {', '.join(left_out)}"
        return RoutePlan(best_set, f"{self.name}/cascade-routing", reason, query.threshold,
                         labels=self.labels(x, pred, query.prompt),
                         predicted_success={n: float(pred.hybrid[0, i]) for i, n in enumerate(names) if n},
                         stepper=stepper)

    def _columns(self, pred: Prediction, catalogue: Catalogue, rungs: list[str], prompt: str):
        """Success, cost and family per routed rung, matched to the artefact's columns by rung name or by the
        model it serves; a rung the artefact never saw gets the mean success and its catalogue price (a rung
        added later is tried on its price until it has been profiled)."""
        hybrid = pred.hybrid[0]
        index = {name: i for i, name in enumerate(self.model.rungs)}
        by_model = {model: i for i, model in enumerate(self.model.models)}
        success, cost, families = [], [], []
        tokens = estimate_tokens(prompt)
        for name in rungs:
            rung = catalogue.get(name)
            column = index.get(name, by_model.get(rung.model))  # by rung name, else by the model it serves
            if column is not None:
                success.append(hybrid[column])
                cost.append(pred.cost[0, column])
            else:
                success.append(self.model.mean_success)
                cost.append(rung.cost(tokens, rung.max_tokens))
            families.append(rung.family)
        return np.array(success), np.array(cost), families

    def labels(self, x: np.ndarray, pred: Prediction, prompt: str) -> tuple[Label, ...]:
        t = int(pred.p_task[0].argmax())
        k = int(pred.p_cx[0].argmax())
        domain, similarity = self.model.taxonomy.domain(x)
        return (Label("task_type", self.model.tasks[t], float(pred.p_task[0, t])),
                Label("complexity", COMPLEXITY[k], float(pred.p_cx[0, k])),
                Label("domain", self.model.taxonomy.domain_names[int(domain[0])], float(max(0.0, similarity[0]))),
                Label("format", answer_format(prompt), 1.0))



class ArtefactPolicy:
    """HybridPolicy over the artefact in a folder, swapped in when the folder's manifest changes."""

    name = "hybrid+cascade"

    def __init__(self, live, encoder_factory=None) -> None:
        from escalon.router.embedding import make_encoder

        self.live = live
        self.encoder_factory = encoder_factory or (lambda name: make_encoder(name, threads=1))
        self._encoders: dict[str, object] = {}
        self._policy: HybridPolicy | None = None
        self.current()

    def current(self) -> HybridPolicy:
        artefact = self.live.current()
        if self._policy is None or self._policy.version != artefact.version:
            name = artefact.model.encoder
            if name not in self._encoders:
                encoder = self.encoder_factory(name)
                encoder.encode(["warm up"])  # load the model now, not on the first request
                self._encoders[name] = encoder
            self._policy = HybridPolicy(artefact.model, self._encoders[name], artefact.judge_weights,
                                        artefact.probe, artefact.version, artefact.estimator)
        return self._policy

    def plan(self, query: RouteQuery, catalogue: Catalogue, rungs: list[str]) -> RoutePlan:
        return self.current().plan(query, catalogue, rungs)
