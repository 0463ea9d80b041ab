"""Gateway settings (env prefix ESCALON_GATEWAY_): where the Router API and the services the operator's page
reads from are, who may call, how fast, and how much traffic the page remembers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from escalon.config import ServiceSettings
from escalon.errors import ConfigError


_NOT_A_LIST = "\x00not-a-json-list"


def _split(value: object) -> object:
    """A JSON list, or comma-separated text (what fits in a Kubernetes Secret or a shell line). Never raises:
    a malformed list becomes a marker that a later check rejects with a message of its own."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                return [_NOT_A_LIST]
            return parsed if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed) else [_NOT_A_LIST]
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALON_GATEWAY_", extra="ignore")

    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    max_in_flight: int = Field(
        default=256, ge=0, le=100_000,
        description="chat completions handled at once; one more is answered 503 `overloaded` at once with Retry-After "
                    "and retry-after-ms (escalon.gateway.admission); 0 = no bound",
    )
    router_address: str = Field(default="127.0.0.1:50051", description="RouterService host:port (every answer)")
    serving_address: str = Field(default="127.0.0.1:50053",
                                 description="ModelServing host:port (/v1/models, rung health on the page)")
    distill_address: str = Field(default="127.0.0.1:50054", description="DistillService host:port (jobs on the page)")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="accepted bearer keys, comma-separated or a JSON list; empty = no authentication",
    )
    rate_limit_rps: float = Field(default=0.0, ge=0, description="requests per second per API key (per client "
                                  "address without keys), a token bucket; 0 = no limit")
    rate_limit_burst: int = Field(default=20, ge=1, le=100_000,
                                  description="token bucket size: requests allowed at once")
    operating_points: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["economy", "balanced", "max-quality"],
        description="operating points /v1/models lists as escalon/<name> "
        "(the names in ESCALON_ROUTER_OPERATING_POINTS)",
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024**3,
                                description="largest request body accepted, in bytes (413 beyond; checked before the "
                                            "body is read, after the API key)")
    request_timeout_s: float = Field(default=900.0, gt=0, le=3600, description="deadline of one route, in seconds")
    upstream_timeout_s: float = Field(default=5.0, gt=0, le=120,
                                      description="deadline of ListModels / ListJobs / health calls")
    traffic_window_s: float = Field(default=3600.0, gt=0, le=7 * 86400,
                                    description="how far back the page's traffic figures reach")
    traffic_max_routes: int = Field(default=10_000, ge=1, le=1_000_000,
                                    description="routes the in-memory traffic window keeps at most")
    traffic_source: Literal["memory", "route_log"] = Field(
        default="memory",
        description="where the page's traffic figures come from: memory (this process's window) or route_log "
                    "(the router's route log in ESCALON_DATABASE_URL: every replica's routes, kept across restarts)",
    )
    frontier_report: Path | None = Field(
        default=None,
        description="eval report JSON for the frontier plot ({points: [{name, cost_usd, quality}]} or an "
        "escalon.profile/v1 table); the live window's operating points when unset",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="proxies trusted for X-Forwarded-For (the client address that rate limits use without keys); "
        "comma-separated addresses or CIDRs, '*' behind an ingress you trust",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser origins allowed to call the API (CORS); empty = none"
    )

    @field_validator("api_keys", "operating_points", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split(value)

    def check_api_keys(self) -> None:
        """Reject malformed keys here, not in a validator: pydantic's report (which gets logged) would quote
        the raw variable, keys and all."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if _NOT_A_LIST in keys:
            raise ConfigError("ESCALON_GATEWAY_API_KEYS: expected comma-separated keys or a JSON list of strings "
                              "(value not shown)")
        if any(not key.strip() for key in keys):
            raise ConfigError("ESCALON_GATEWAY_API_KEYS: an API key is empty (value not shown)")

    @field_validator("operating_points", "cors_origins")
    @classmethod
    def _well_formed(cls, items: list[str]) -> list[str]:
        if _NOT_A_LIST in items:
            raise ValueError("expected comma-separated names or a JSON list of strings")
        return items

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)
