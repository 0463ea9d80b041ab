"""Settings of the serving service: ESCALON_SERVING_* plus the shared ESCALON_CATALOGUE / ESCALON_DATA_DIR."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from escalon.config import ServiceSettings


class ServingSettings(ServiceSettings):
    # populate_by_name: tests and embedders may pass `catalogue=` / `data_dir=` as well as the env names.
    model_config = SettingsConfigDict(env_prefix="ESCALON_SERVING_", extra="ignore", populate_by_name=True)

    port: int = Field(default=50053, ge=0, le=65535, description="port to bind; 0 picks a free one")
    runtime: Literal["ray", "inprocess"] = Field(
        default="ray",
        description=(
            "ray: each rung is a Ray Serve deployment (production). inprocess: the same backends called "
            "directly in this process, no Ray - for fast tests of other services, and to measure Ray's own "
            "overhead in benchmarks"
        ),
    )
    direct_rungs: bool = Field(
        default=True,
        description="under the ray runtime, call rungs that do no local compute (replay, remote OpenAI-compatible) "
                    "from this front directly; false puts them behind Ray Serve too (one more hop, no gain)",
    )
    ray_address: str = Field(
        default="",
        description="Ray cluster to join (ray://head:10001 in Kubernetes); empty starts a local Ray in this process",
    )
    ray_num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray; all of the machine's when unset")
    ray_temp_dir: Path | None = Field(
        default=None,
        description="a local Ray's session folder (<data_dir>/ray when unset); keep the path short, Ray puts sockets in it",
    )
    deploy: bool = Field(
        default=True,
        description="deploy a Serve application per rung; false only attaches to existing ones named after the rungs (KubeRay RayService)",
    )
    rungs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="rungs to serve, comma-separated; empty serves every rung in the catalogue"
    )
    max_prompt_chars: int = Field(default=32_000, ge=1, description="longest prompt accepted, in characters")
    model_cache: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ESCALON_MODEL_CACHE", "ESCALON_SERVING_MODEL_CACHE"),
        description="folder of converted local models (<data_dir>/models when unset); share it to skip re-conversion",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="torch threads per local model replica; unset: the CPUs its rung reserves (resources.num_cpus, rounded up)",
    )
    health_timeout_s: float = Field(default=2.0, gt=0, description="how long ListModels waits for a rung's health")
    serve_promoted: bool = Field(
        default=True,
        description="also serve rungs promoted by distillation (<data_dir>/catalogue.promoted.yaml): each is loaded "
        "when it first appears, without a restart",
    )

    @field_validator("rungs", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def models_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"

    @property
    def ray_session_dir(self) -> Path:
        """Where a local Ray keeps its session. Ray puts unix sockets 64 characters deeper and refuses paths over
        107 bytes, so a long <data_dir> (pytest's tmp folders, deep home folders) falls back to a short /tmp path."""
        if self.ray_temp_dir is not None:
            return self.ray_temp_dir
        preferred = self.data_dir / "ray"
        if len(str(preferred.resolve())) <= 40:
            return preferred
        digest = hashlib.sha1(str(preferred.resolve()).encode()).hexdigest()[:8]
        return Path(tempfile.gettempdir()) / f"escalon-ray-{digest}"
