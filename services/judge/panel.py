"""The judge panel: run the requested judges over one rung's samples and aggregate them into one confidence.

A judge without the evidence it needs is skipped and says why, never faked: consistency judges need at
least two samples, cross-model agreement needs an answer from a rung of another family. The panel's
confidence is the mean of the judges that ran; with no judge able to run, the confidence is 0. The judge
service scores through escalon.judge.engine, which adds the other judges (execution, text, token, P(True))
and replaces this mean by fitted weights and a calibration map (escalon.judge.calibration) when it has one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.answers import infer_answer_type, parse_answer
from escalon.judge.consistency import cross_model_agreement, sample_consistency
from escalon.judging import Candidate, JudgeResult, JudgeWeights, agreeing_share

__all__ = ["Candidate", "JudgeResult", "JudgeWeights", "Verdict", "check_judges", "judge_answers", "parse_answers"]

CONSISTENCY_JUDGES = ("agreement", "entropy", "fsd")
PREDICTED_SUCCESS = "predicted_success"
DEFAULT_PANEL = (*CONSISTENCY_JUDGES, "cross_model")
JUDGES = (*DEFAULT_PANEL, PREDICTED_SUCCESS)


@dataclass(frozen=True)
class Verdict:
    confidence: float
    answer: str | None  # the majority parsed answer
    answer_text: str  # a candidate text that gave it
    answer_type: int
    scores: tuple[JudgeResult, ...]
    counts: tuple[tuple[str, int], ...] = ()
    invalid: int = 0
    parsed: tuple[str | None, ...] = ()  # each candidate's parsed answer, in order
    ran: tuple[JudgeResult, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ran", tuple(s for s in self.scores if not s.skipped))

    @property
    def agreeing_share(self) -> float:
        return agreeing_share(self.ran)


def parse_answers(prompt: str, texts: list[str], answer_type: int) -> list[str | None]:
    """Parse the answers to one prompt. Code is compared by what it does: each program runs in the sandbox
    against the prompt's tests and examples (escalon.execution); other types parse text alone
    (escalon.answers)."""
    if answer_type == AnswerType.ANSWER_TYPE_CODE:
        from escalon.execution import execution_answers

        return list(execution_answers(prompt, texts).parsed)
    return [parse_answer(text, answer_type) for text in texts]


def check_judges(judges: list[str]) -> tuple[str, ...]:
    unknown = [j for j in judges if j not in JUDGES]
    if unknown:
        raise InvalidInput(f"unknown judge(s) {', '.join(unknown)}; known judges: {', '.join(JUDGES)}", field="judges")
    return tuple(judges) or DEFAULT_PANEL


def judge_answers(
    prompt: str,
    candidates: list[Candidate],
    *,
    references: list[Candidate] = (),
    answer_type: int = AnswerType.ANSWER_TYPE_UNSPECIFIED,
    judges: tuple[str, ...] = DEFAULT_PANEL,
    predicted_success: float | None = None,
    weights: JudgeWeights | None = None,
) -> Verdict:
    """Run the judges over one rung's samples. A given `predicted_success` always runs as a judge."""
    if predicted_success is not None and PREDICTED_SUCCESS not in judges:
        judges = (*judges, PREDICTED_SUCCESS)
    if answer_type == AnswerType.ANSWER_TYPE_UNSPECIFIED:
        answer_type = infer_answer_type(prompt)
    parsed = parse_answers(prompt, [c.text for c in candidates], answer_type)
    if answer_type != AnswerType.ANSWER_TYPE_FREE_TEXT:
        # A sample cut at its token limit never reached its final answer: the last number (or letter) in it
        # is whatever it was saying when it stopped, so it is no answer at all.
        parsed = [None if c.truncated else p for c, p in zip(candidates, parsed)]
    stats = sample_consistency(parsed)
    results: list[JudgeResult] = []
    for name in judges:
        if name in CONSISTENCY_JUDGES:
            if len(candidates) < 2:
                results.append(JudgeResult(name, 0.0, True, "one sample: consistency needs n ≥ 2"))
            elif len(candidates) - stats.invalid == 1:
                # Invalid samples are dropped when valid ones exist, so one valid answer would "agree with
                # itself" perfectly: no evidence of consistency at all.
                results.append(JudgeResult(name, 0.0, True, f"one valid answer in {len(candidates)} samples: "
                                                             "consistency needs two"))
            else:
                results.append(JudgeResult(name, getattr(stats, name)))
        elif name == "cross_model":
            family = candidates[0].family if candidates else ""
            score = cross_model_agreement(stats.majority, family, _reference_answers(references, answer_type, prompt))
            if score is None:
                results.append(JudgeResult(name, 0.0, True, "no parsed answer from a rung of another family"))
            else:
                results.append(JudgeResult(name, score))
        elif name == PREDICTED_SUCCESS:
            if predicted_success is None:
                results.append(JudgeResult(name, 0.0, True, "the router sent no predicted success for this rung"))
            else:
                results.append(JudgeResult(name, min(1.0, max(0.0, float(predicted_success)))))
    ran = [r.score for r in results if not r.skipped]
    if not ran or stats.majority is None:  # nothing judged, or no valid answer: confidence 0, whatever the weights
        confidence = 0.0
    elif weights is not None:
        confidence = weights.confidence(results)
    else:
        confidence = sum(ran) / len(ran)
    answer_text = next((c.text for c, p in zip(candidates, parsed) if p == stats.majority), candidates[0].text if candidates else "")
    return Verdict(confidence, stats.majority, answer_text, answer_type, tuple(results), stats.counts, stats.invalid,
                   tuple(parsed))


def _reference_answers(references: list[Candidate], answer_type: int, prompt: str = "") -> list[tuple[str | None, str]]:
    """One answer per reference rung: its plurality parsed answer. A rung whose samples tie at the top
    could not agree with itself, so it casts no vote."""
    by_rung: dict[tuple[str, str], list[str]] = {}
    for ref, parsed in zip(references, parse_answers(prompt, [r.text for r in references], answer_type)):
        if parsed is not None and not (ref.truncated and answer_type != AnswerType.ANSWER_TYPE_FREE_TEXT):
            by_rung.setdefault((ref.rung, ref.family), []).append(parsed)
    votes = []
    for (_, family), answers in by_rung.items():
        top = Counter(answers).most_common(2)
        if len(top) == 1 or top[0][1] > top[1][1]:
            votes.append((top[0][0], family))
    return votes
