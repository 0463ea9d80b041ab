"""What every backend takes and returns, and the small base class they share.

These are plain dataclasses, not protobuf messages: they cross the Ray boundary by pickling and are
turned into the serving.v1 messages once, in the servicer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from escalon.registry import Rung


@dataclass(frozen=True)
class GenerateParams:
    """One validated request: the servicer has already applied defaults and limits."""

    prompt: str
    max_tokens: int
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per position; > 0 implies logprobs
    seed: int | None = None
    # Local rungs only: shape the prompt for this escalon.common.v1.AnswerType (escalon.answer_format: an
    # instruction, stop strings, a token cap fitting the type). None: the prompt as sent.
    answer_type: int | None = None
    first_greedy: bool = False  # sample 0 greedy, the others at `temperature` (set by the shaping above)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    entropy: float | None = None  # nats, over the full next-token distribution (local models only)
    self_certainty: float | None = None  # KL(uniform || p) at this position (local models only)
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Sample:
    text: str
    finish_reason: str  # "stop" | "length"
    output_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class GenerateResult:
    samples: list[Sample]
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None  # None: the servicer prices the tokens at the rung's price
    reference_score: float | None = None  # replay rungs: the recorded score of the recorded answer


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text up to the earliest stop string (which is dropped, as OpenAI does), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Backend(ABC):
    """A model engine behind one rung. `load` is blocking (it may read a model); the rest is async."""

    def __init__(self, rung: Rung) -> None:
        self.rung = rung

    def load(self) -> None:
        """Get ready to answer; raise ConfigError when the rung's configuration cannot work."""

    @abstractmethod
    async def generate(self, params: GenerateParams) -> GenerateResult: ...

    async def stream(self, params: GenerateParams) -> AsyncIterator[str | GenerateResult]:
        """Text pieces as they are produced, then the whole result. Default: the whole text as one piece."""
        result = await self.generate(params)
        if result.samples and result.samples[0].text:
            yield result.samples[0].text
        yield result

    @abstractmethod
    async def health(self) -> str:
        """Raise when the engine cannot answer; otherwise return a short status line for ListModels."""

    async def close(self) -> None:
        """Release clients and memory."""
