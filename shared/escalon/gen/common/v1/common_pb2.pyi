from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnswerType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_TYPE_UNSPECIFIED: _ClassVar[AnswerType]
    ANSWER_TYPE_NUMBER: _ClassVar[AnswerType]
    ANSWER_TYPE_CHOICE: _ClassVar[AnswerType]
    ANSWER_TYPE_YES_NO: _ClassVar[AnswerType]
    ANSWER_TYPE_FREE_TEXT: _ClassVar[AnswerType]
    ANSWER_TYPE_CODE: _ClassVar[AnswerType]
ANSWER_TYPE_UNSPECIFIED: AnswerType
ANSWER_TYPE_NUMBER: AnswerType
ANSWER_TYPE_CHOICE: AnswerType
ANSWER_TYPE_YES_NO: AnswerType
ANSWER_TYPE_FREE_TEXT: AnswerType
ANSWER_TYPE_CODE: AnswerType

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "cost_usd")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    cost_usd: float
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token", "logprob")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "entropy", "self_certainty", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    SELF_CERTAINTY_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    entropy: float
    self_certainty: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., entropy: _Optional[float] = ..., self_certainty: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class JudgeScore(_message.Message):
    __slots__ = ("judge", "score", "skipped", "reason")
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    judge: str
    score: float
    skipped: bool
    reason: str
    def __init__(self, judge: _Optional[str] = ..., score: _Optional[float] = ..., skipped: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
