from escalon.gen.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Candidate(_message.Message):
    __slots__ = ("text", "rung", "family", "logprobs", "truncated")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    text: str
    rung: str
    family: str
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    truncated: bool
    def __init__(self, text: _Optional[str] = ..., rung: _Optional[str] = ..., family: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "candidates", "answer_type", "judges", "references", "task", "judge_rung", "judge_timeout_s", "predicted_success", "weights")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TYPE_FIELD_NUMBER: _ClassVar[int]
    JUDGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    JUDGE_RUNG_FIELD_NUMBER: _ClassVar[int]
    JUDGE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    answer_type: _common_pb2.AnswerType
    judges: _containers.RepeatedScalarFieldContainer[str]
    references: _containers.RepeatedCompositeFieldContainer[Candidate]
    task: str
    judge_rung: str
    judge_timeout_s: float
    predicted_success: float
    weights: JudgeWeights
    def __init__(self, prompt: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., answer_type: _Optional[_Union[_common_pb2.AnswerType, str]] = ..., judges: _Optional[_Iterable[str]] = ..., references: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., task: _Optional[str] = ..., judge_rung: _Optional[str] = ..., judge_timeout_s: _Optional[float] = ..., predicted_success: _Optional[float] = ..., weights: _Optional[_Union[JudgeWeights, _Mapping]] = ...) -> None: ...

class JudgeWeight(_message.Message):
    __slots__ = ("judge", "weight", "skipped_weight")
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    judge: str
    weight: float
    skipped_weight: float
    def __init__(self, judge: _Optional[str] = ..., weight: _Optional[float] = ..., skipped_weight: _Optional[float] = ...) -> None: ...

class JudgeWeights(_message.Message):
    __slots__ = ("bias", "version", "judges")
    BIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JUDGES_FIELD_NUMBER: _ClassVar[int]
    bias: float
    version: str
    judges: _containers.RepeatedCompositeFieldContainer[JudgeWeight]
    def __init__(self, bias: _Optional[float] = ..., version: _Optional[str] = ..., judges: _Optional[_Iterable[_Union[JudgeWeight, _Mapping]]] = ...) -> None: ...

class AnswerCount(_message.Message):
    __slots__ = ("answer", "count")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    answer: str
    count: int
    def __init__(self, answer: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("confidence", "answer", "answer_text", "answer_type", "scores", "answers", "invalid", "raw_confidence", "calibrated", "calibration", "judge_usage")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    RAW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    JUDGE_USAGE_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    answer: str
    answer_text: str
    answer_type: _common_pb2.AnswerType
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.JudgeScore]
    answers: _containers.RepeatedCompositeFieldContainer[AnswerCount]
    invalid: int
    raw_confidence: float
    calibrated: bool
    calibration: str
    judge_usage: _common_pb2.Usage
    def __init__(self, confidence: _Optional[float] = ..., answer: _Optional[str] = ..., answer_text: _Optional[str] = ..., answer_type: _Optional[_Union[_common_pb2.AnswerType, str]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.JudgeScore, _Mapping]]] = ..., answers: _Optional[_Iterable[_Union[AnswerCount, _Mapping]]] = ..., invalid: _Optional[int] = ..., raw_confidence: _Optional[float] = ..., calibrated: _Optional[bool] = ..., calibration: _Optional[str] = ..., judge_usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...
