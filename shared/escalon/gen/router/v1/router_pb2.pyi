from escalon.gen.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_EVENT_KIND_UNSPECIFIED: _ClassVar[RouteEventKind]
    ROUTE_EVENT_KIND_DECIDED: _ClassVar[RouteEventKind]
    ROUTE_EVENT_KIND_ATTEMPT_STARTED: _ClassVar[RouteEventKind]
    ROUTE_EVENT_KIND_ATTEMPT_JUDGED: _ClassVar[RouteEventKind]
    ROUTE_EVENT_KIND_ESCALATED: _ClassVar[RouteEventKind]
ROUTE_EVENT_KIND_UNSPECIFIED: RouteEventKind
ROUTE_EVENT_KIND_DECIDED: RouteEventKind
ROUTE_EVENT_KIND_ATTEMPT_STARTED: RouteEventKind
ROUTE_EVENT_KIND_ATTEMPT_JUDGED: RouteEventKind
ROUTE_EVENT_KIND_ESCALATED: RouteEventKind

class RouteRequest(_message.Message):
    __slots__ = ("prompt", "operating_point", "max_cost_usd", "min_quality", "pin_rung", "answer_type", "max_tokens", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PIN_RUNG_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    operating_point: str
    max_cost_usd: float
    min_quality: float
    pin_rung: str
    answer_type: _common_pb2.AnswerType
    max_tokens: int
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., operating_point: _Optional[str] = ..., max_cost_usd: _Optional[float] = ..., min_quality: _Optional[float] = ..., pin_rung: _Optional[str] = ..., answer_type: _Optional[_Union[_common_pb2.AnswerType, str]] = ..., max_tokens: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RungAttempt(_message.Message):
    __slots__ = ("rung", "family", "answer", "parsed_answer", "cost_usd", "latency_ms", "confidence", "judge_scores", "accepted", "usage", "samples", "note")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    PARSED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_SCORES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    rung: str
    family: str
    answer: str
    parsed_answer: str
    cost_usd: float
    latency_ms: float
    confidence: float
    judge_scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.JudgeScore]
    accepted: bool
    usage: _common_pb2.Usage
    samples: int
    note: str
    def __init__(self, rung: _Optional[str] = ..., family: _Optional[str] = ..., answer: _Optional[str] = ..., parsed_answer: _Optional[str] = ..., cost_usd: _Optional[float] = ..., latency_ms: _Optional[float] = ..., confidence: _Optional[float] = ..., judge_scores: _Optional[_Iterable[_Union[_common_pb2.JudgeScore, _Mapping]]] = ..., accepted: _Optional[bool] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., samples: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class TaxonomyLabel(_message.Message):
    __slots__ = ("dimension", "label", "probability")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    label: str
    probability: float
    def __init__(self, dimension: _Optional[str] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("answer", "rung", "attempts", "total_cost_usd", "total_latency_ms", "labels", "policy", "reason", "confidence", "request_id", "trace_id")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    answer: str
    rung: str
    attempts: _containers.RepeatedCompositeFieldContainer[RungAttempt]
    total_cost_usd: float
    total_latency_ms: float
    labels: _containers.RepeatedCompositeFieldContainer[TaxonomyLabel]
    policy: str
    reason: str
    confidence: float
    request_id: str
    trace_id: str
    def __init__(self, answer: _Optional[str] = ..., rung: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[RungAttempt, _Mapping]]] = ..., total_cost_usd: _Optional[float] = ..., total_latency_ms: _Optional[float] = ..., labels: _Optional[_Iterable[_Union[TaxonomyLabel, _Mapping]]] = ..., policy: _Optional[str] = ..., reason: _Optional[str] = ..., confidence: _Optional[float] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ...) -> None: ...

class RouteStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: RouteRequest
    def __init__(self, request: _Optional[_Union[RouteRequest, _Mapping]] = ...) -> None: ...

class RouteEvent(_message.Message):
    __slots__ = ("kind", "rung", "message", "attempt")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    kind: RouteEventKind
    rung: str
    message: str
    attempt: RungAttempt
    def __init__(self, kind: _Optional[_Union[RouteEventKind, str]] = ..., rung: _Optional[str] = ..., message: _Optional[str] = ..., attempt: _Optional[_Union[RungAttempt, _Mapping]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("rung", "text")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    rung: str
    text: str
    def __init__(self, rung: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RouteStreamResponse(_message.Message):
    __slots__ = ("event", "token", "result")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    event: RouteEvent
    token: TokenChunk
    result: RouteResponse
    def __init__(self, event: _Optional[_Union[RouteEvent, _Mapping]] = ..., token: _Optional[_Union[TokenChunk, _Mapping]] = ..., result: _Optional[_Union[RouteResponse, _Mapping]] = ...) -> None: ...
