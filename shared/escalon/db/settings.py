"""Settings of Escalon's own database (the route log, tenants and keys) and of who may call the APIs.

Fixed names, read by every process that needs them (the router, the distill front and worker, the gateway's
ops page, `escalon routes` / `escalon keys`):

    ESCALON_DATABASE_URL   sqlite:///<data_dir>/escalon.sqlite by default; postgresql+psycopg://user@host/db
    ESCALON_REDIS_URL      shared rate limits across replicas (redis://host:6379/0); in-process when unset
    ESCALON_PROFILE        dev (the embedded stack: may run open) | production
    ESCALON_AUTH           auto (keys once any exist; open only in the dev profile) | keys | open
    ESCALON_ROUTE_LOG*     the route log: on/off, prompts stored or only hashed, queue, batch, retention
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from escalon.config import DEFAULT_DATA_DIR

_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgres://")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


def psycopg3(url: str) -> str:
    """`postgresql://` means psycopg2 to SQLAlchemy, which Escalon does not ship: use psycopg 3 instead."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALON_", extra="ignore", populate_by_name=True)
    help_defaults: ClassVar[dict[str, str]] = {"database_url": "sqlite:///<ESCALON_DATA_DIR>/escalon.sqlite"}

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, validation_alias=_env("ESCALON_DATA_DIR"),
                           description="writable folder for model caches, databases and job artefacts")
    database_url: str = Field(default="", validation_alias=_env("ESCALON_DATABASE_URL"),
                              description="route log, tenants and keys: sqlite:///path or "
                                          "postgresql+psycopg://user@host/db")
    redis_url: str = Field(default="", validation_alias=_env("ESCALON_REDIS_URL"),
                           description="rate limits shared by every replica (redis://host:6379/0); "
                                       "in-process when unset")
    profile: Literal["dev", "production"] = Field(
        default="dev", validation_alias=_env("ESCALON_PROFILE"),
        description="dev: the embedded stack, may run without keys; production: refuses to start open unless "
                    "ESCALON_AUTH=open")
    auth: Literal["auto", "keys", "open"] = Field(
        default="auto", validation_alias=_env("ESCALON_AUTH"),
        description="auto: keys are required once any exist (always outside dev); keys: always; "
                    "open: nobody is asked for a key")
    key_cache_s: float = Field(default=5.0, ge=0, le=3600, validation_alias=_env("ESCALON_KEY_CACHE_S"),
                               description="how long a replica trusts a key it looked up (a revocation takes "
                                           "effect within this)")
    spend_sync_s: float = Field(default=2.0, gt=0, le=3600, validation_alias=_env("ESCALON_SPEND_SYNC_S"),
                                description="how often a replica writes its spend and reads the others'")
    route_log: bool = Field(default=True, validation_alias=_env("ESCALON_ROUTE_LOG"),
                            description="record every route in the database")
    route_log_prompts: bool = Field(
        default=False, validation_alias=_env("ESCALON_ROUTE_LOG_PROMPTS"),
        description="store prompts and answers in the route log (opt-in); otherwise their SHA-256 and length")
    route_log_queue: int = Field(default=10_000, ge=1, le=10_000_000, validation_alias=_env("ESCALON_ROUTE_LOG_QUEUE"),
                                 description="records waiting for the database at most; beyond, records are "
                                             "dropped and counted")
    route_log_batch: int = Field(default=200, ge=1, le=100_000, validation_alias=_env("ESCALON_ROUTE_LOG_BATCH"),
                                 description="records written per transaction at most")
    route_log_flush_s: float = Field(default=0.5, gt=0, le=60, validation_alias=_env("ESCALON_ROUTE_LOG_FLUSH_S"),
                                     description="how long a record waits for others to share its batch")
    route_log_retention_days: float = Field(
        default=30.0, gt=0, validation_alias=_env("ESCALON_ROUTE_LOG_RETENTION_DAYS"),
        description="routes older than this are pruned (escalon.distill.prune_route_log, on beat daily)")

    @field_validator("database_url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if url and not url.startswith(_SCHEMES):
            raise ValueError("expected sqlite:///path or postgresql+psycopg://user@host/db")
        return psycopg3(url)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db")
        return url

    @model_validator(mode="after")
    def _default_under_data_dir(self) -> DatabaseSettings:
        self.data_dir = self.data_dir.expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'escalon.sqlite'}"
        return self

    @property
    def may_run_open(self) -> bool:
        return self.auth == "open" or (self.auth == "auto" and self.profile == "dev")
