"""Confidence from agreement among parsed answers (docs/judges.md, Consistency judges).

Over the n valid answers with frequencies f1 ≥ f2 ≥ …:
  agreement = f1/n;  entropy = 1 − H/log2(U) (1 if U = 1);  fsd = (f1 − f2)/n (1 if U = 1).
All answers invalid → 0 (the reference code returns 1 there: a bug we do not copy).
Cross-model agreement applies the same idea across rungs of different families.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Consistency:
    agreement: float
    entropy: float
    fsd: float
    majority: str | None
    counts: tuple[tuple[str, int], ...]
    invalid: int


def sample_consistency(parsed: list[str | None]) -> Consistency:
    valid = [a for a in parsed if a is not None]
    invalid = len(parsed) - len(valid)
    if not valid:
        return Consistency(0.0, 0.0, 0.0, None, (), invalid)
    counts = Counter(valid).most_common()
    n, distinct = len(valid), len(counts)
    f1 = counts[0][1]
    f2 = counts[1][1] if distinct > 1 else 0
    if distinct == 1:
        entropy = fsd = 1.0
    else:
        h = -sum((c / n) * math.log2(c / n) for _, c in counts)
        entropy = 1.0 - h / math.log2(distinct)
        fsd = (f1 - f2) / n
    return Consistency(f1 / n, entropy, fsd, counts[0][0], tuple(counts), invalid)


def cross_model_agreement(answer: str | None, family: str, references: list[tuple[str | None, str]]) -> float | None:
    """Share of other-family rungs whose parsed answer equals this one; None when there is no such rung."""
    others = [ref for ref, ref_family in references if ref_family != family and ref is not None]
    if answer is None or not others:
        return None
    return sum(ref == answer for ref in others) / len(others)
