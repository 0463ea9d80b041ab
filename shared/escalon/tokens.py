"""Token counts where no tokenizer is at hand (no tokenizer is shared across rungs)."""

from __future__ import annotations

import math


def estimate_tokens(text: str) -> int:
    """Tokens ≈ characters / 4, rounded up (the usual English rule of thumb); for cost estimates, context
    checks and the prices of rungs that report no usage."""
    return math.ceil(len(text) / 4)
