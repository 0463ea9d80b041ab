"""Judge service settings (env prefix ESCALON_JUDGE_)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from escalon.config import ServiceSettings


class JudgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALON_JUDGE_", extra="ignore")

    port: int = Field(default=50052, ge=0, le=65535, description="gRPC port (0: a free one)")
    serving_address: str = Field(default="127.0.0.1:50053", description="ModelServing, for LLM judges")
    max_candidates: int = Field(default=64, gt=0, description="samples + references per Score call")
    max_answer_chars: int = Field(default=32_000, gt=0, description="longest answer text accepted")
    max_prompt_chars: int = Field(default=32_000, gt=0, description="longest prompt accepted")
    max_logprob_tokens: int = Field(default=8192, gt=0, description="most token log-probs accepted per candidate")
    calibration: Annotated[list[Path], NoDecode] = Field(
        default=[],  # pydantic copies it per instance; a literal shows in --help, a factory does not
        description="calibration artefacts (escalon.judge-calibration/v1 JSON, comma-separated; the first wins "
                    "where two fit the same group); empty: the plain mean of the judges, uncalibrated",
    )
    judge_rung: str = Field(default="", description="rung that answers P(True) when a request names none; "
                                                    "empty: p_true is skipped unless the request names one")
    judge_timeout_s: float = Field(default=10.0, gt=0, le=300, description="time limit of each LLM-judge call")
    exec_wall_s: float = Field(default=5.0, gt=0, le=60, description="code judge: wall-clock limit per run")
    exec_cpu_s: int = Field(default=2, gt=0, le=60, description="code judge: CPU seconds per run (RLIMIT_CPU)")
    exec_memory_mb: int = Field(default=256, ge=32, le=8192, description="code judge: address space (RLIMIT_AS)")
    exec_network: Literal["auto", "namespace", "hook"] = Field(
        default="auto", description="code judge: no-network by a network namespace where allowed (auto), "
                                    "required (namespace), or by the audit hook alone (hook)")

    @field_validator("calibration", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value
