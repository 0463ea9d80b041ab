from escalon.gen.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Candidate(_message.Message):
    __slots__ = ("text", "rung", "family", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    rung: str
    family: str
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    def __init__(self, text: _Optional[str] = ..., rung: _Optional[str] = ..., family: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "candidates", "answer_type", "judges", "references")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TYPE_FIELD_NUMBER: _ClassVar[int]
    JUDGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    answer_type: _common_pb2.AnswerType
    judges: _containers.RepeatedScalarFieldContainer[str]
    references: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, prompt: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., answer_type: _Optional[_Union[_common_pb2.AnswerType, str]] = ..., judges: _Optional[_Iterable[str]] = ..., references: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class AnswerCount(_message.Message):
    __slots__ = ("answer", "count")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    answer: str
    count: int
    def __init__(self, answer: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("confidence", "answer", "answer_text", "answer_type", "scores", "answers", "invalid")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    answer: str
    answer_text: str
    answer_type: _common_pb2.AnswerType
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.JudgeScore]
    answers: _containers.RepeatedCompositeFieldContainer[AnswerCount]
    invalid: int
    def __init__(self, confidence: _Optional[float] = ..., answer: _Optional[str] = ..., answer_text: _Optional[str] = ..., answer_type: _Optional[_Union[_common_pb2.AnswerType, str]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.JudgeScore, _Mapping]]] = ..., answers: _Optional[_Iterable[_Union[AnswerCount, _Mapping]]] = ..., invalid: _Optional[int] = ...) -> None: ...
