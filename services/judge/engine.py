"""The judge engine: every judge the service knows, run over one rung's answers, combined into one calibrated
confidence. The servicer, the calibration reports and the in-process harness all score through this class,
so a figure in a report is what the service would have said.

Judges (docs/judges.md), each a score in [0, 1] or skipped with its reason — never faked:
  sample consistency   agreement, entropy, fsd        escalon.judge.panel / consistency (n ≥ 2 samples)
  cross-model          cross_model                    answers of rungs of other families, parsed and compared
  code                 execution                      share of the prompt's tests the majority program passes
  answer text          format, hedging, brevity       escalon.judge.textual
  token probabilities  token_confidence, self_certainty, deferral   escalon.judge.tokens (rungs with logprobs)
  LLM-as-judge         p_true                         escalon.judge.ptrue, through the ModelServing API

Aggregation (escalon.judge.calibration): with a fitted artefact, a weighted mean of the judges that ran and the
map fitted for that (task, rung, judges) group; without one, the plain mean (what the panel always did). All
answers invalid → confidence 0. The default panel is the artefact's (what it was fitted for), else the
panel's sample-consistency + cross-model judges.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from escalon.answers import infer_answer_type
from escalon.errors import InvalidInput, clip
from escalon.execution import SANDBOX, extract_probes, pass_share
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.grpc import time_left
from escalon.registry import Catalogue
from escalon.sandbox import Sandbox
from escalon.judge import panel
from escalon.judge.calibration import Applied, Calibration
from escalon.judge.panel import Candidate, JudgeResult, JudgeWeights, Verdict, judge_answers
from escalon.judge.ptrue import JudgeModel, JudgeUnavailable, ptrue_prompt, read_ptrue
from escalon.judge.textual import TEXT_JUDGES, text_judge
from escalon.judge.tokens import TOKEN_JUDGES, features, mean_self_certainty, squash_self_certainty, token_confidence

ENGINE_JUDGES = ("execution", *TEXT_JUDGES, *TOKEN_JUDGES, "p_true")
#: Judges that cost a model call; the others are pure functions of the request.
LLM_JUDGES = ("p_true",)


def aggregate(ran: dict[str, float], valid: bool, calibration: Calibration | None, task: str = "",
              rungs: Sequence[str] = ()) -> Applied:
    """The panel's confidence from the judges that ran: 0 when no candidate gave a valid answer; the fitted
    weights and map when an artefact is loaded; otherwise the plain mean (uncalibrated)."""
    if not valid:
        return Applied(0.0, 0.0, False, "no candidate gave a valid answer: confidence 0")
    if calibration is not None:
        return calibration.apply(ran, task, rungs)
    if ran:
        mean = sum(ran.values()) / len(ran)
        return Applied(mean, mean, False, "no calibration artefact loaded: mean of the judges that ran")
    return Applied(0.0, 0.0, False, "no judge could run: confidence 0")


def known_judges() -> tuple[str, ...]:
    return tuple(dict.fromkeys((*panel.JUDGES, *ENGINE_JUDGES)))


@dataclass(frozen=True)
class JudgeUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0

    def __add__(self, other: JudgeUsage) -> JudgeUsage:
        return JudgeUsage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                          self.cost_usd + other.cost_usd, self.latency_ms + other.latency_ms)


@dataclass(frozen=True)
class Scored:
    verdict: Verdict  # confidence and scores are the engine's (all judges, calibrated where possible)
    raw_confidence: float
    calibrated: bool
    calibration: str  # the map applied, or why none
    usage: JudgeUsage

    @property
    def confidence(self) -> float:
        return self.verdict.confidence


class JudgeEngine:
    def __init__(self, *, calibration: Calibration | None = None, judge_model: JudgeModel | None = None,
                 catalogue: Catalogue | None = None, judge_rung: str = "", judge_timeout_s: float = 10.0,
                 sandbox: Sandbox | None = None) -> None:
        self.calibration = calibration
        self.judge_model = judge_model
        self.catalogue = catalogue
        self.judge_rung = judge_rung
        self.judge_timeout_s = judge_timeout_s
        self.sandbox = sandbox

    @property
    def default_panel(self) -> tuple[str, ...]:
        if self.calibration is not None:
            return tuple(j for j in self.calibration.judges if j in known_judges())
        return tuple(panel.DEFAULT_PANEL)

    def check_judges(self, judges: Sequence[str]) -> tuple[str, ...]:
        known = known_judges()
        unknown = [j for j in judges if j not in known]
        if unknown:
            raise InvalidInput(f"unknown judge(s) {', '.join(clip(j, 40) for j in unknown[:5])}; known judges: {', '.join(known)}",
                               field="judges")
        duplicated = sorted({j for j in judges if list(judges).count(j) > 1})
        if duplicated:
            raise InvalidInput(f"judge(s) named twice: {', '.join(clip(j, 40) for j in duplicated[:5])}", field="judges")
        return tuple(judges) or self.default_panel

    async def score(self, prompt: str, candidates: Sequence[Candidate], *, references: Sequence[Candidate] = (),
                    answer_type: int = AnswerType.ANSWER_TYPE_UNSPECIFIED, judges: Sequence[str] = (),
                    task: str = "", judge_rung: str = "", judge_timeout_s: float = 0.0,
                    predicted_success: float | None = None, weights: JudgeWeights | None = None) -> Scored:
        """`predicted_success` (the router's prior for this rung) runs as a judge; `weights` (fitted by the
        router for its plan) replace the calibration artefact's aggregation for this call."""
        if not candidates:
            raise InvalidInput("no candidates to score; send at least one answer", field="candidates")
        judges = self.check_judges(judges)
        if predicted_success is not None and panel.PREDICTED_SUCCESS not in judges:
            judges = (*judges, panel.PREDICTED_SUCCESS)
        if answer_type == AnswerType.ANSWER_TYPE_UNSPECIFIED:
            answer_type = infer_answer_type(prompt)
        panel_judges = tuple(j for j in judges if j in panel.JUDGES)
        call = lambda: judge_answers(prompt, list(candidates), references=list(references),  # noqa: E731
                                     answer_type=answer_type, judges=panel_judges,
                                     predicted_success=predicted_success)
        if answer_type == AnswerType.ANSWER_TYPE_CODE:  # runs programs: off the event loop, in our sandbox
            token = SANDBOX.set(self.sandbox)
            try:
                verdict = await asyncio.to_thread(call)
            finally:
                SANDBOX.reset(token)
        else:
            verdict = call()
        by_name = {r.judge: r for r in verdict.scores}
        group = [c for c, p in zip(candidates, verdict.parsed) if p is not None and p == verdict.answer]
        usage = JudgeUsage()
        for name in judges:
            if name in by_name:
                continue
            if name == "p_true":
                by_name[name], usage = await self._p_true(prompt, verdict, candidates, judge_rung, judge_timeout_s)
            else:
                by_name[name] = self._local_judge(name, prompt, verdict, group, answer_type)
        results = tuple(by_name[j] for j in judges)
        ran = {r.judge: r.score for r in results if not r.skipped}
        if weights is not None and verdict.answer is not None:
            value = weights.confidence(results) if ran else 0.0
            applied = Applied(value, value, True, f"the router's fitted judge weights {weights.version}".rstrip())
        else:
            applied = aggregate(ran, verdict.answer is not None, self.calibration, task,
                                self._rung_keys(candidates[0].rung))
        verdict = dataclasses.replace(verdict, confidence=applied.confidence, scores=results)
        return Scored(verdict, applied.raw, applied.calibrated, applied.note, usage)

    def _rung_keys(self, rung: str) -> list[str]:
        """The rung's name and, through the catalogue, the model it serves (recorded benchmarks use model names)."""
        keys = [rung] if rung else []
        if self.catalogue is not None and rung in self.catalogue.by_name:
            keys.append(self.catalogue.by_name[rung].model)
        return keys

    def _local_judge(self, name: str, prompt: str, verdict: Verdict, group: list[Candidate],
                     answer_type: int) -> JudgeResult:
        if not group:
            return JudgeResult(name, 0.0, True, "no candidate gave a valid answer")
        if name in TEXT_JUDGES:
            value = text_judge(name, [c.text for c in group], answer_type)
            if value is None:
                return JudgeResult(name, 0.0, True, "no arithmetic to check in the answer")
            return JudgeResult(name, value)
        if name == "execution":
            if answer_type != AnswerType.ANSWER_TYPE_CODE:
                return JudgeResult(name, 0.0, True, "only for code answers")
            share = pass_share(verdict.answer, tuple(extract_probes(prompt)))
            if share is None:
                return JudgeResult(name, 0.0, True, "the prompt states no tests or examples with an expected result")
            return JudgeResult(name, share)
        with_logprobs = [c.logprobs for c in group if c.logprobs]
        if not with_logprobs:
            return JudgeResult(name, 0.0, True, "the rung returned no token log-probs")
        if name == "token_confidence":
            values = [token_confidence(stats) for stats in with_logprobs]
            return JudgeResult(name, sum(values) / len(values))
        if name == "self_certainty":
            values = [v for v in (mean_self_certainty(stats) for stats in with_logprobs) if v is not None]
            if not values:
                return JudgeResult(name, 0.0, True, "needs full next-token distributions (self-hosted rungs only)")
            sc = sum(values) / len(values)
            return JudgeResult(name, squash_self_certainty(sc), reason=f"mean self-certainty {sc:.2f} nats")
        if name == "deferral":
            model = self.calibration.deferral if self.calibration is not None else None
            if model is None:
                return JudgeResult(name, 0.0, True, "no fitted deferral model in the calibration artefact")
            predictions = [model.predict(features(stats) or {}) for stats in with_logprobs]
            predictions = [p for p in predictions if p is not None]
            if not predictions:
                return JudgeResult(name, 0.0, True, "token features incomplete")
            return JudgeResult(name, sum(predictions) / len(predictions))
        raise AssertionError(f"no local judge named {name}")

    async def _p_true(self, prompt: str, verdict: Verdict, candidates: Sequence[Candidate], judge_rung: str,
                      timeout_s: float) -> tuple[JudgeResult, JudgeUsage]:
        rung = judge_rung or self.judge_rung
        timeout_s = time_left(timeout_s or self.judge_timeout_s)  # never past the Score caller's own deadline
        if verdict.answer is None:
            return JudgeResult("p_true", 0.0, True, "no candidate gave a valid answer"), JudgeUsage()
        if not rung:
            return JudgeResult("p_true", 0.0, True, "no judge rung: set ESCALON_JUDGE_JUDGE_RUNG or "
                                                    "ScoreRequest.judge_rung"), JudgeUsage()
        if self.judge_model is None:
            return JudgeResult("p_true", 0.0, True, "no serving connection for LLM judges"), JudgeUsage()
        prompt_format = "chat"
        family = ""
        if self.catalogue is not None and rung in self.catalogue.by_name:
            prompt_format = self.catalogue.by_name[rung].prompt_format
            family = self.catalogue.by_name[rung].family
        try:
            reply = await asyncio.wait_for(
                self.judge_model.first_tokens(rung, ptrue_prompt(prompt, verdict.answer_text, prompt_format),
                                              timeout_s=timeout_s),
                timeout=timeout_s)
        except asyncio.TimeoutError:
            return JudgeResult("p_true", 0.0, True, f"judge rung {rung} timed out after {timeout_s:g} s"), JudgeUsage()
        except JudgeUnavailable as exc:
            return JudgeResult("p_true", 0.0, True, f"judge rung {rung} unavailable: {exc}"), JudgeUsage()
        usage = JudgeUsage(reply.input_tokens, reply.output_tokens, reply.cost_usd, reply.latency_ms)
        value = read_ptrue(reply.positions)
        if value is None:
            return JudgeResult("p_true", 0.0, True, f"judge rung {rung} put neither A nor B in its top "
                                                    "alternatives"), usage
        same = family and candidates and candidates[0].family == family
        note = f"judge rung {rung}" + (" (same family as the answer: weaker evidence)" if same else "")
        return JudgeResult("p_true", value, reason=note), usage
