"""Router settings (env prefix ESCALON_ROUTER_)."""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from escalon.config import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALON_ROUTER_", extra="ignore")

    port: int = Field(default=50051, ge=0, le=65535, description="port of the public Router API")
    serving_address: str = Field(default="127.0.0.1:50053", description="ModelServing host:port")
    judge_address: str = Field(default="127.0.0.1:50052", description="JudgeService host:port")
    rungs: list[str] = Field(default_factory=list, description="rungs the cascade may use (JSON list); empty = all")
    operating_points: dict[str, float] = Field(
        default_factory=lambda: {"economy": 0.5, "balanced": 0.7, "max-quality": 0.9},
        description="named acceptance thresholds (JSON object)",
    )
    default_operating_point: str = Field(default="balanced", description="used when a request names none")
    local_samples: int = Field(default=3, ge=1, le=32, description="samples per self-hosted rung")
    remote_samples: int = Field(default=1, ge=1, le=32, description="samples per remote or replay rung")
    temperature: float = Field(default=0.7, ge=0, le=2, description="sampling temperature of cascade attempts")
    max_prompt_chars: int = Field(default=32_000, gt=0, description="longest prompt accepted")
    artefact: Path | None = Field(
        default=None,
        description="trained routing artefact folder (escalon eval writes <out>/artefact): the router then plans "
                    "with the hybrid policy and reloads the folder when its manifest changes; unset = cheapest-first",
    )
    dependency_wait_s: float = Field(default=600, ge=0, description="how long start waits for serving and judge")
    dependency_check_s: float = Field(default=2.0, gt=0, le=60,
                                      description="how often a running router checks that serving and the judge "
                                                  "answer (NOT_SERVING while either does not)")

    @field_validator("operating_points")
    @classmethod
    def _thresholds_in_range(cls, points: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in points.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1]: {bad}")
        return points
