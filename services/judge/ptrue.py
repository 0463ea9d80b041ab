"""LLM-as-judge, P(True) (docs/judges.md): ask a judge rung "Is the proposed answer correct? (A) True
(B) False" and read the probability it gives to True at its first answer token.

Any rung can judge: the call goes through the ModelServing API (`ServingJudgeModel`) with top_logprobs = 20
and a few tokens, at temperature 0. P(True) = p(A) / (p(A) + p(B)), summing the spellings of each option
("A", " A", "(A", "True", ...) at the first of the first three positions where either appears among the top
alternatives; an option missing from the top-20 is bounded by the smallest probability listed (so a judge
never claims certainty it did not show). No option in sight → the judge is skipped, as it is when the judge
rung times out (each call has its own deadline) or is unavailable: the reason is in the response.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc

TOP_LOGPROBS = 20
POSITIONS = 3
MAX_QUESTION_CHARS = 3000
MAX_ANSWER_CHARS = 1500


@dataclass(frozen=True)
class FirstTokens:
    """The judge rung's first generated positions, each as its top alternatives (token, logprob)."""

    positions: tuple[tuple[tuple[str, float], ...], ...]
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class JudgeModel(Protocol):
    async def first_tokens(self, rung: str, prompt: str, *, timeout_s: float) -> FirstTokens: ...


class JudgeUnavailable(Exception):
    """The judge rung could not answer (down, unknown, prompt too long); the judge is skipped with this reason."""


class ServingJudgeModel:
    """P(True) through the ModelServing API."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = serving_pb2_grpc.ModelServingServiceStub(channel)

    async def first_tokens(self, rung: str, prompt: str, *, timeout_s: float) -> FirstTokens:
        request = serving_pb2.GenerateRequest(rung=rung, prompt=prompt, n=1, temperature=0.0, max_tokens=POSITIONS,
                                              logprobs=True, top_logprobs=TOP_LOGPROBS)
        started = time.perf_counter()
        try:
            reply = await self.stub.Generate(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise asyncio.TimeoutError() from None
            raise JudgeUnavailable(f"{exc.code().name}: {exc.details()}") from None
        sample = reply.samples[0] if reply.samples else None
        positions = tuple(tuple((t.token, t.logprob) for t in token.top) for token in (sample.logprobs if sample else ()))
        return FirstTokens(positions, reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.cost_usd,
                           (time.perf_counter() - started) * 1000)


def ptrue_prompt(question: str, answer: str, prompt_format: str = "chat") -> str:
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        question = question[:MAX_QUESTION_CHARS] + " …"
    answer = answer.strip()
    if len(answer) > MAX_ANSWER_CHARS:
        answer = "… " + answer[-MAX_ANSWER_CHARS:]  # the end holds the final answer
    body = (f"Question: {question}\n\nProposed answer: {answer}\n\nIs the proposed answer correct?\n"
            "(A) True\n(B) False\n")
    if prompt_format == "completion":
        return body + "\nThe proposed answer is: ("
    return "Here is a question and a proposed answer.\n\n" + body + "\nReply with the letter only: A or B."


def _option(token: str) -> str | None:
    t = token.strip().lstrip("(").strip().rstrip(").:").strip().upper()
    if t in ("A", "TRUE"):
        return "A"
    if t in ("B", "FALSE"):
        return "B"
    return None


def read_ptrue(positions: Sequence[Sequence[tuple[str, float]]]) -> float | None:
    for top in positions[:POSITIONS]:
        mass = {"A": 0.0, "B": 0.0}
        for token, logprob in top:
            option = _option(token)
            if option:
                mass[option] += math.exp(logprob)
        if mass["A"] == 0 and mass["B"] == 0:
            continue
        floor = math.exp(min(lp for _, lp in top)) if top else 0.0
        p_a, p_b = mass["A"] or floor, mass["B"] or floor
        return p_a / (p_a + p_b)
    return None
