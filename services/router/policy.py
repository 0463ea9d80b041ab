"""The routing seam: a policy turns a query into a plan — which rungs the cascade may try, in what order,
and how sure an answer must be. The foundation ships one policy (cheapest-first over the catalogue); the
taxonomy, learned and hybrid policies implement the same protocol, so the cascade and the API never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.judging import JudgeWeights
from escalon.registry import Catalogue
from escalon.tokens import estimate_tokens

# An answer is accepted when the panel's confidence reaches τ and at least this share of judges agree
# (unweighted panels); a plan with fitted judge weights sets its own share (0: the fitted confidence decides).
AGREEING_SHARE = 2 / 3


@dataclass(frozen=True)
class RouteQuery:
    prompt: str
    threshold: float  # τ: the confidence an answer needs to be accepted
    answer_type: int = AnswerType.ANSWER_TYPE_UNSPECIFIED
    max_cost_usd: float | None = None
    pin_rung: str | None = None
    max_tokens: int = 0  # 0 = each rung's default


@dataclass(frozen=True)
class Label:
    dimension: str  # task_type, complexity, domain, format
    label: str
    probability: float


@dataclass(frozen=True)
class RoutePlan:
    rungs: tuple[str, ...]  # the candidates, in the order the cascade tries them
    policy: str  # which path was taken
    reason: str  # why, in words a person can check
    threshold: float
    labels: tuple[Label, ...] = ()
    predicted_success: Mapping[str, float] = field(default_factory=dict)  # sent to the predicted_success judge
    judge_weights: JudgeWeights | None = None  # how the panel aggregates; None = mean of the judges that ran
    min_agreeing_share: float = AGREEING_SHARE
    # cascade routing (escalon.router.cascade_routing.Stepper): decides after every answer which rung runs next
    # or stops; `rungs` then lists its first best set, for the trace
    stepper: object | None = None


class RoutingPolicy(Protocol):
    name: str

    def plan(self, query: RouteQuery, catalogue: Catalogue, rungs: list[str]) -> RoutePlan:
        """Choose and order candidates among `rungs` (the rungs this router may use)."""


class CheapestFirstPolicy:
    """Every allowed rung, cheapest expected cost first; the judges decide where to stop."""

    name = "cheapest-first"

    def plan(self, query: RouteQuery, catalogue: Catalogue, rungs: list[str]) -> RoutePlan:
        if query.pin_rung:
            return RoutePlan((query.pin_rung,), "pinned", f"the request pinned rung {query.pin_rung}", query.threshold)
        tokens = estimate_tokens(query.prompt)
        ordered = tuple(r.name for r in catalogue.cheapest_first(rungs, prompt_tokens=tokens))
        return RoutePlan(
            ordered,
            self.name,
            f"fixed cascade over {len(ordered)} rungs by expected cost; accept at confidence ≥ {query.threshold:.2f}",
            query.threshold,
        )

