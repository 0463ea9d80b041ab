from escalon.gen.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("rung", "prompt", "n", "temperature", "max_tokens", "stop", "logprobs", "top_logprobs", "seed", "answer_type")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TYPE_FIELD_NUMBER: _ClassVar[int]
    rung: str
    prompt: str
    n: int
    temperature: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    logprobs: bool
    top_logprobs: int
    seed: int
    answer_type: _common_pb2.AnswerType
    def __init__(self, rung: _Optional[str] = ..., prompt: _Optional[str] = ..., n: _Optional[int] = ..., temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., seed: _Optional[int] = ..., answer_type: _Optional[_Union[_common_pb2.AnswerType, str]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("text", "logprobs", "finish_reason", "output_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    finish_reason: str
    output_tokens: int
    def __init__(self, text: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., finish_reason: _Optional[str] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("rung", "samples", "usage", "latency_ms", "reference_score")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SCORE_FIELD_NUMBER: _ClassVar[int]
    rung: str
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    usage: _common_pb2.Usage
    latency_ms: float
    reference_score: float
    def __init__(self, rung: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., latency_ms: _Optional[float] = ..., reference_score: _Optional[float] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: GenerateRequest
    def __init__(self, request: _Optional[_Union[GenerateRequest, _Mapping]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("text", "done", "response")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    text: str
    done: bool
    response: GenerateResponse
    def __init__(self, text: _Optional[str] = ..., done: _Optional[bool] = ..., response: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Rung(_message.Message):
    __slots__ = ("name", "family", "backend", "model", "prompt_format", "input_usd_per_1m", "output_usd_per_1m", "context_limit", "healthy", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    INPUT_USD_PER_1M_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_1M_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    backend: str
    model: str
    prompt_format: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    context_limit: int
    healthy: bool
    status: str
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., prompt_format: _Optional[str] = ..., input_usd_per_1m: _Optional[float] = ..., output_usd_per_1m: _Optional[float] = ..., context_limit: _Optional[int] = ..., healthy: _Optional[bool] = ..., status: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("rungs",)
    RUNGS_FIELD_NUMBER: _ClassVar[int]
    rungs: _containers.RepeatedCompositeFieldContainer[Rung]
    def __init__(self, rungs: _Optional[_Iterable[_Union[Rung, _Mapping]]] = ...) -> None: ...
