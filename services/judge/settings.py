"""Judge service settings (env prefix ESCALON_JUDGE_)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from escalon.config import ServiceSettings


class JudgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALON_JUDGE_", extra="ignore")

    port: int = Field(default=50052, ge=0, le=65535)
    serving_address: str = Field(default="127.0.0.1:50053", description="ModelServing, for LLM judges")
    max_candidates: int = Field(default=64, gt=0, description="samples + references per Score call")
    max_answer_chars: int = Field(default=32_000, gt=0, description="longest answer text accepted")
