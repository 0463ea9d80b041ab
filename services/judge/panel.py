"""The judge panel: run the requested judges over one rung's samples and aggregate them into one confidence.

A judge without the evidence it needs is skipped and says why, never faked: consistency judges need at
least two samples, cross-model agreement needs an answer from a rung of another family. The panel's
confidence is the mean of the judges that ran (weights and calibration fitted from logged outcomes come
with the calibration work); with no judge able to run, the confidence is 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from escalon.errors import InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.judge.answers import infer_answer_type, parse_answer
from escalon.judge.consistency import cross_model_agreement, sample_consistency

CONSISTENCY_JUDGES = ("agreement", "entropy", "fsd")
JUDGES = (*CONSISTENCY_JUDGES, "cross_model")
DEFAULT_PANEL = JUDGES


@dataclass(frozen=True)
class Candidate:
    text: str
    rung: str = ""
    family: str = ""


@dataclass(frozen=True)
class JudgeResult:
    judge: str
    score: float
    skipped: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    confidence: float
    answer: str | None  # the majority parsed answer
    answer_text: str  # a candidate text that gave it
    answer_type: int
    scores: tuple[JudgeResult, ...]
    counts: tuple[tuple[str, int], ...] = ()
    invalid: int = 0
    ran: tuple[JudgeResult, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ran", tuple(s for s in self.scores if not s.skipped))

    @property
    def agreeing_share(self) -> float:
        """Share of the judges that ran which lean 'correct' (score ≥ 0.5); the cascade asks for ≥ 2/3."""
        return sum(s.score >= 0.5 for s in self.ran) / len(self.ran) if self.ran else 0.0


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
) -> Verdict:
    if answer_type == AnswerType.ANSWER_TYPE_UNSPECIFIED:
        answer_type = infer_answer_type(prompt)
    parsed = [parse_answer(c.text, answer_type) for c in candidates]
    stats = sample_consistency(parsed)
    results: list[JudgeResult] = []
    for name in judges:
        if name in CONSISTENCY_JUDGES:
            if len(candidates) < 2:
                results.append(JudgeResult(name, 0.0, True, "one sample: consistency needs n ≥ 2"))
            else:
                results.append(JudgeResult(name, getattr(stats, name)))
        elif name == "cross_model":
            family = candidates[0].family if candidates else ""
            score = cross_model_agreement(stats.majority, family, _reference_answers(references, answer_type))
            if score is None:
                results.append(JudgeResult(name, 0.0, True, "no parsed answer from a rung of another family"))
            else:
                results.append(JudgeResult(name, score))
    ran = [r.score for r in results if not r.skipped]
    confidence = sum(ran) / len(ran) if ran and stats.majority is not None else 0.0
    answer_text = next((c.text for c, p in zip(candidates, parsed) if p == stats.majority), candidates[0].text if candidates else "")
    return Verdict(confidence, stats.majority, answer_text, answer_type, tuple(results), stats.counts, stats.invalid)


def _reference_answers(references: list[Candidate], answer_type: int) -> list[tuple[str | None, str]]:
    """One answer per reference rung: its plurality parsed answer. A rung whose samples tie at the top
    could not agree with itself, so it casts no vote."""
    by_rung: dict[tuple[str, str], list[str]] = {}
    for ref in references:
        parsed = parse_answer(ref.text, answer_type)
        if parsed is not None:
            by_rung.setdefault((ref.rung, ref.family), []).append(parsed)
    votes = []
    for (_, family), answers in by_rung.items():
        top = Counter(answers).most_common(2)
        if len(top) == 1 or top[0][1] > top[1][1]:
            votes.append((top[0][0], family))
    return votes
