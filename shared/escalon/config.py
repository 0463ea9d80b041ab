"""Typed settings shared by every service.

Each service subclasses `ServiceSettings` with its own env prefix (ESCALON_ROUTER_, ...); the fields
here are common to all and read from fixed names (ESCALON_CATALOGUE, ESCALON_DATA_DIR, ...). Nothing
is read at import: `load_settings` is called by a service's entry point, and turns pydantic's
validation report into one message that names every bad variable and what it expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from escalon.errors import ConfigError

DEFAULT_DATA_DIR = Path.home() / ".cache" / "escalon"


class ServiceSettings(BaseSettings):
    """Settings every service shares. Subclasses set `model_config = SettingsConfigDict(env_prefix=...)`."""

    # populate_by_name: code and tests may pass data_dir=... as well as the environment names.
    model_config = SettingsConfigDict(env_prefix="ESCALON_", extra="ignore", populate_by_name=True)
    #: field -> what --help shows as its default where the value is computed (say, from ESCALON_DATA_DIR)
    help_defaults: ClassVar[dict[str, str]] = {}

    catalogue: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ESCALON_CATALOGUE"),
        description="rung catalogue YAML; the packaged embedded catalogue when unset",
    )
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        validation_alias=AliasChoices("ESCALON_DATA_DIR"),
        description="writable folder for model caches, databases and job artefacts",
    )
    grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=300,
        validation_alias=AliasChoices("ESCALON_GRACE_SECONDS"),
        description="how long a stopping server lets in-flight calls finish",
    )
    host: str = Field(default="127.0.0.1", description="address to bind; 0.0.0.0 in containers")
    port: int = Field(default=0, ge=0, le=65535, description="port to bind; 0 picks a free one")
    max_in_flight: int = Field(
        default=256, ge=0, le=100_000,
        description="calls handled at once (health and reflection not counted); one more is shed at once with "
                    "RESOURCE_EXHAUSTED 'overloaded: ...' and a retry-after-ms hint; 0 = no bound",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="port of the Prometheus /metrics endpoint (on host); unset = none, 0 = a free port",
    )
    promoted_catalogue: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ESCALON_PROMOTED_CATALOGUE"),
        description="rungs promoted by distillation (a `rungs:` YAML), re-read when it changes; "
                    "<data_dir>/catalogue.promoted.yaml when unset (in a cluster: the catalogue ConfigMap's key)",
    )

    @property
    def promoted_overlay(self) -> Path:
        """Where this process reads promoted rungs from (escalon.registry.LiveCatalogue)."""
        from escalon.registry import promoted_path

        return self.promoted_catalogue or promoted_path(self.data_dir)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from the environment (and overrides), or raise ConfigError with one clear message."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"{_env_name(cls, field, prefix)}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid {cls.__name__} configuration — " + "; ".join(problems)) from None


def _env_name(cls: type[BaseSettings], field: str, prefix: str) -> str:
    info = cls.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{prefix}{field}".upper()


def settings_help(cls: type[BaseSettings]) -> str:
    """The environment variables of a settings class for --help, one per line: name, what it does, default.
    The one renderer every entry point uses (escalon.main)."""
    prefix = cls.model_config.get("env_prefix", "")
    shown_defaults = getattr(cls, "help_defaults", {})
    lines = []
    for name, info in cls.model_fields.items():
        default = shown_defaults.get(name)
        if default is None:
            value = info.get_default(call_default_factory=True)
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value if not isinstance(v, SecretStr)) or "(none)"
            default = "-" if value is None else str(value)
        lines.append(f"  {_env_name(cls, name, prefix):<38} {info.description or ''} [default: {default}]")
    return "environment:\n" + "\n".join(lines)
