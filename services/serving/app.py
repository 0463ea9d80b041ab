"""The Serve application builder: `escalon.serving.app:build_app` is the import path KubeRay's RayService
(serveConfigV2) and `serve run` use, with args {rung: <name>, catalogue: <path>?, model_cache: <path>?,
torch_threads: <int>?}. The gRPC front deploys the same applications through `bind_rung`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from escalon.config import load_settings
from escalon.errors import ConfigError, InvalidInput
from escalon.registry import load_catalogue

from .deployment import bind_rung
from .settings import ServingSettings

if TYPE_CHECKING:
    from ray.serve import Application


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rung: str = Field(min_length=1, description="the catalogue rung this application serves")
    catalogue: Path | None = Field(default=None, description="catalogue YAML; ESCALON_CATALOGUE or the packaged one")
    model_cache: Path | None = Field(default=None, description="converted models folder; ESCALON_MODEL_CACHE or <data_dir>/models")
    torch_threads: int | None = Field(default=None, ge=1, description="ESCALON_SERVING_TORCH_THREADS, else the rung's CPUs")


def build_app(args: dict) -> Application:
    """One rung's Serve application. Bad args fail here, with the reason, before any replica starts."""
    try:
        parsed = AppArgs.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"escalon.serving.app:build_app args invalid — {problems}") from None
    settings = load_settings(ServingSettings)
    catalogue = load_catalogue(parsed.catalogue or settings.catalogue)
    try:
        rung = catalogue.get(parsed.rung)
    except InvalidInput as exc:  # here a wrong rung name is a deployment configuration mistake
        raise ConfigError(f"escalon.serving.app:build_app args invalid — {exc}") from None
    return bind_rung(rung, parsed.model_cache or settings.models_dir, parsed.torch_threads or settings.torch_threads)
