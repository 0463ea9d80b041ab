"""The OpenAI Chat Completions shapes and their mapping onto the Router API.

Request -> RouteRequest:
  messages   -> prompt: the last message (which must be the user's) alone when it is the only one; otherwise
                the whole conversation as a readable transcript ("System: ...", "User: ...", "Assistant: ...",
                blank line between turns) ending with that last user message.
  model      -> `escalon/auto` (the router's default), `escalon/<operating point>` (operating_point), or a
                rung name (pin_rung).
  max_tokens / max_completion_tokens -> max_tokens; max_cost_usd, min_quality, answer_type (extra body fields,
                what the OpenAI SDK sends with `extra_body=`) -> the same RouteRequest fields.
Sampling fields (temperature, top_p, seed, stop, penalties) are accepted and not used: the cascade samples
the way its judges need. What cannot be honoured (n > 1, tools, logprobs, JSON modes) is a 400 naming the field.

RouteResponse -> completion: choices[0].message.content = the answer; usage = the attempts' tokens summed; an
`escalon` object (rung, cost, confidence, attempts, trace id); `model` = the rung that answered.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2
from escalon.gateway.errors import invalid

AUTO = "escalon/auto"
POLICY_PREFIX = "escalon/"
INT32_MAX = 2**31 - 1
ANSWER_TYPES = {
    "number": AnswerType.ANSWER_TYPE_NUMBER,
    "choice": AnswerType.ANSWER_TYPE_CHOICE,
    "yes-no": AnswerType.ANSWER_TYPE_YES_NO,
    "free-text": AnswerType.ANSWER_TYPE_FREE_TEXT,
    "code": AnswerType.ANSWER_TYPE_CODE,
}
_ROLE_LABEL = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant",
               "tool": "Tool", "function": "Tool"}
# A GSM8K question recorded in the shipped demo sample: the replay rungs answer it (the schema's example).
EXAMPLE_PROMPT = ("Lisa and Peter are selling chocolate bars door to door. Lisa sold three and a half boxes of "
                  "chocolate bars, and Peter sold four and a half boxes. They sold 64 chocolate bars together. "
                  "How many chocolate bars are in a box?")


# ---- request ---------------------------------------------------------------------------------------------

class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """Images, audio, files: accepted by the schema so the error names the part, then refused."""

    model_config = ConfigDict(extra="allow")
    type: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | OtherPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat completion request. Unknown fields are ignored, as OpenAI clients send many."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{
            "model": AUTO,
            "messages": [{"role": "user", "content": EXAMPLE_PROMPT}],
            "max_tokens": 64,
            "answer_type": "number",
        }]},
    )

    model: str = Field(min_length=1, max_length=200,
                       description="escalon/auto, escalon/<operating point> (economy, balanced, max-quality), "
                                   "or a rung")
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000,
                                        description="the conversation; the last is the user's")
    stream: bool | None = Field(default=False, description="server-sent events, sent once the cascade has decided")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX,
                                   description="longest answer per attempt, in tokens")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX, description="as max_tokens")
    n: int | None = Field(default=None, ge=1, le=INT32_MAX, description="only 1: Escalon returns one answer")
    temperature: float | None = Field(default=None, description="accepted, not used: the cascade sets sampling")
    top_p: float | None = Field(default=None, description="accepted, not used")
    stop: str | list[str] | None = Field(default=None, description="accepted, not used")
    seed: int | None = Field(default=None, description="accepted, not used")
    user: str | None = Field(default=None, description="accepted, not used")
    logprobs: bool | None = Field(default=None, description="not supported when true")
    tools: list[dict[str, Any]] | None = Field(default=None, description="not supported")
    response_format: dict[str, Any] | None = Field(default=None, description="only {type: text}")
    # Escalon's knobs (extra_body with the OpenAI SDK)
    max_cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                       description="budget in USD the route never exceeds")
    min_quality: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                      description="judge confidence an answer needs, in [0, 1]")
    answer_type: Literal["number", "choice", "yes-no", "free-text", "code"] | None = Field(
        default=None, description="how answers are compared; inferred from the prompt when absent")


# ---- response --------------------------------------------------------------------------------------------

class AttemptSummary(BaseModel):
    rung: str
    accepted: bool
    confidence: float
    cost_usd: float
    latency_ms: float
    samples: int
    input_tokens: int
    output_tokens: int
    parsed_answer: str = ""
    note: str = ""


class EscalonInfo(BaseModel):
    """How Escalon got the answer (the RouteResponse, summarised)."""

    rung: str
    cost_usd: float
    confidence: float
    latency_ms: float
    policy: str
    reason: str
    request_id: str
    trace_id: str
    attempts: list[AttemptSummary]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="the rung that answered")
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    escalon: EscalonInfo


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- mapping ---------------------------------------------------------------------------------------------

def message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, TextPart) and part.type == "text":
            raise invalid("a text part needs a `text` string", f"messages[{index}].content[{j}].text")
        if not isinstance(part, TextPart):
            raise invalid(f"content parts of type {part.type!r} are not supported; Escalon's rungs read text",
                          f"messages[{index}].content[{j}]", code="unsupported_content")
        texts.append(part.text)
    return "\n".join(texts)


def prompt_of(messages: list[ChatMessage]) -> str:
    last = len(messages) - 1
    if messages[last].role != "user":
        raise invalid(f"the last message must be the user's (got role {messages[last].role!r})", "messages")
    question = message_text(messages[last], last)
    if not question.strip():
        raise invalid("the last user message is empty; send the question to answer", f"messages[{last}].content")
    if last == 0:
        return question
    turns = []
    for i, message in enumerate(messages):
        text = message_text(message, i).strip()
        if text:
            turns.append(f"{_ROLE_LABEL[message.role]}: {text}")
    return "\n\n".join(turns)


def route_request(body: ChatCompletionRequest, request_id: str) -> router_pb2.RouteRequest:
    """The RouteRequest for a chat completion, or an APIError naming the field that cannot be honoured."""
    if body.n not in (None, 1):
        raise invalid("Escalon returns one answer per request; n must be 1", "n")
    if body.tools:
        raise invalid("tools are not supported by the Escalon gateway", "tools")
    if body.logprobs:
        raise invalid("logprobs are not available through the Escalon gateway", "logprobs")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise invalid("only response_format {\"type\": \"text\"} is supported", "response_format")
    prompt = prompt_of(body.messages)
    for name, text in (("messages", prompt), ("model", body.model)):
        if not _is_unicode(text):  # JSON can escape a lone surrogate; no protobuf string can carry one
            raise invalid("contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text", name)
    request = router_pb2.RouteRequest(prompt=prompt, request_id=request_id)
    model = body.model.strip()
    if model == AUTO:
        pass
    elif model.startswith(POLICY_PREFIX):
        request.operating_point = model[len(POLICY_PREFIX):]
        if not request.operating_point:
            raise invalid("name an operating point after escalon/ (escalon/economy, ...) or use escalon/auto",
                          "model")
    else:
        request.pin_rung = model
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens:
        request.max_tokens = max_tokens
    if body.max_cost_usd is not None:
        request.max_cost_usd = body.max_cost_usd
    if body.min_quality is not None:
        request.min_quality = body.min_quality
    if body.answer_type:
        request.answer_type = ANSWER_TYPES[body.answer_type]
    return request


def operating_label(body: ChatCompletionRequest) -> str:
    """What the traffic window groups by for the frontier: the model, and the knobs that move the point."""
    label = body.model.strip()
    if body.min_quality is not None:
        label += f" min_quality={body.min_quality:g}"
    if body.max_cost_usd is not None:
        label += f" max_cost_usd={body.max_cost_usd:g}"
    return label


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escalon_info(response: router_pb2.RouteResponse) -> EscalonInfo:
    return EscalonInfo(
        rung=response.rung, cost_usd=response.total_cost_usd, confidence=response.confidence,
        latency_ms=response.total_latency_ms, policy=response.policy, reason=response.reason,
        request_id=response.request_id, trace_id=response.trace_id,
        attempts=[AttemptSummary(rung=a.rung, accepted=a.accepted, confidence=a.confidence, cost_usd=a.cost_usd,
                                 latency_ms=a.latency_ms, samples=a.samples, input_tokens=a.usage.input_tokens,
                                 output_tokens=a.usage.output_tokens, parsed_answer=a.parsed_answer, note=a.note)
                  for a in response.attempts],
    )


def usage_of(response: router_pb2.RouteResponse) -> Usage:
    prompt = sum(a.usage.input_tokens for a in response.attempts)
    completion = sum(a.usage.output_tokens for a in response.attempts)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def completion(response: router_pb2.RouteResponse, completion_id: str, created: int | None = None) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id, created=created or int(time.time()), model=response.rung,
        choices=[Choice(index=0, message=AssistantMessage(content=response.answer), finish_reason="stop")],
        usage=usage_of(response), escalon=escalon_info(response),
    )


def escalon_headers(response: router_pb2.RouteResponse) -> dict[str, str]:
    return {
        "x-escalon-rung": response.rung,
        "x-escalon-cost-usd": repr(response.total_cost_usd),  # shortest text that reads back as the same float
        "x-escalon-confidence": f"{response.confidence:.4f}",
        "x-escalon-trace-id": response.trace_id,
        "x-request-id": response.request_id,
    }


_PIECE = re.compile(r"\S+\s*|\s+")


def pieces(text: str, min_chars: int = 12) -> list[str]:
    """The answer cut at word boundaries into pieces of about min_chars, for the stream's content deltas."""
    out: list[str] = []
    current = ""
    for match in _PIECE.finditer(text):
        current += match.group(0)
        if len(current) >= min_chars:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def chunk(completion_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
          **extra: Any) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}


def stream_chunks(response: router_pb2.RouteResponse, completion_id: str, created: int,
                  include_usage: bool) -> list[dict]:
    """The whole stream for a decided route: role, the answer in pieces, the finish chunk with `escalon`, and
    (stream_options.include_usage) the usage chunk with empty choices, as OpenAI sends it."""
    model = response.rung
    info = escalon_info(response).model_dump()
    chunks = [chunk(completion_id, created, model, {"role": "assistant", "content": ""})]
    chunks += [chunk(completion_id, created, model, {"content": piece}) for piece in pieces(response.answer)]
    chunks.append(chunk(completion_id, created, model, {}, "stop", escalon=info))
    if include_usage:
        chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "system_fingerprint": None, "choices": [], "usage": usage_of(response).model_dump(),
                       "escalon": info})
    return chunks
