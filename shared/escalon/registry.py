"""The model catalogue: every rung (model tier) Escalon can route to, as configuration, not code.

A catalogue is a YAML file (ESCALON_CATALOGUE) with a list of rungs; the packaged `catalogue.yaml`
is the embedded default (local GGUF models shipped on PyPI plus replay rungs over a shipped sample
of recorded benchmark answers). Relative paths in a catalogue are resolved against its folder.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from escalon.errors import ConfigError, InvalidInput, shown

DEFAULT_CATALOGUE = Path(__file__).with_name("catalogue.yaml")
Backend = Literal["local-gguf", "hf", "openai", "replay"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    input_per_1m: float = Field(ge=0, description="USD per million input tokens")
    output_per_1m: float = Field(ge=0, description="USD per million output tokens")


class Retries(_Strict):
    """Retries of a remote rung's call on 429, 5xx, timeouts and refused connections (exponential backoff
    with full jitter; a Retry-After header is honoured, up to max_retry_after_s)."""

    attempts: int = Field(default=3, ge=1, le=10, description="tries in all, the first included; 1 = no retry")
    initial_backoff_s: float = Field(default=0.5, ge=0, le=60)
    max_backoff_s: float = Field(default=8.0, ge=0, le=300)
    max_retry_after_s: float = Field(default=30.0, ge=0, le=600,
                                     description="a longer Retry-After is not waited for: the rung is unavailable")


class Circuit(_Strict):
    """The router's circuit breaker for this rung (escalon.router.circuit)."""

    failures: int = Field(default=3, ge=1, description="failures in a row that open the circuit")
    cooldown_s: float = Field(default=30.0, gt=0, description="how long an open rung is skipped")
    max_cooldown_s: float = Field(default=300.0, gt=0, description="the cooldown doubles per failed trial up to this")
    slow_call_s: float = Field(default=30.0, gt=0, description="open too while `failures` calls have been pending "
                                                                "this long with no answer since (a hung rung)")


class Autoscaling(_Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class Resources(_Strict):
    num_cpus: float = Field(default=1, ge=0)
    num_gpus: float = Field(default=0, ge=0)


class Rung(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$", max_length=63)
    family: str = Field(min_length=1, description="model family; judges prefer a different family")
    backend: Backend
    model: str = Field(min_length=1, description="packaged model id or path; remote model name; replayed model")
    prompt_format: Literal["chat", "completion"] = "chat"
    # never None once validated: unset, the maintained price map's price for a known provider model (escalon.prices)
    price: Price | None = Field(default=None, description="USD per 1M tokens; unset = the price map's, for a known "
                                                          "provider model")
    context_limit: int = Field(default=2048, gt=0, description="tokens of prompt + answer")
    max_tokens: int = Field(default=256, gt=0, description="default answer length")
    timeout_s: float = Field(default=120, gt=0, description="total time for one call, retries included")
    connect_timeout_s: float = Field(default=10, gt=0, description="remote rungs: time to open the connection")
    first_token_timeout_s: float | None = Field(
        default=None, gt=0, description="time to the first streamed text (remote: to the response); unset = timeout_s")
    retries: Retries = Retries()
    circuit: Circuit = Circuit()
    # openai backend
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, description="environment variable that holds the API key")
    # replay backend
    benchmark: Path | None = Field(default=None, description="benchmark.parquet in the shared routing format")
    # Ray Serve deployment of this tier
    autoscaling: Autoscaling = Autoscaling()
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _backend_fields(self) -> Rung:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("an openai rung needs base_url (the endpoint's /v1 URL)")
        if self.backend == "replay" and self.benchmark is None:
            raise ValueError("a replay rung needs benchmark (a benchmark.parquet path)")
        if self.price is None:
            from escalon.prices import provider_price

            found = provider_price(self.model, self.base_url)
            if found is None:
                raise ValueError(f"no price: set price (input_per_1m, output_per_1m); the price map does not know "
                                 f"model {self.model!r}")
            object.__setattr__(self, "price", Price(input_per_1m=found.input_per_1m, output_per_1m=found.output_per_1m))
            self._price_source = found.source
        return self

    _price_source: str = PrivateAttr(default="catalogue")

    @property
    def price_source(self) -> str:
        """Where the price came from: "catalogue", or the price map and the entry it matched."""
        return self._price_source

    @property
    def is_local(self) -> bool:
        return self.backend in ("local-gguf", "hf")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price.input_per_1m + output_tokens * self.price.output_per_1m) / 1e6


class Catalogue(_Strict):
    rungs: tuple[Rung, ...] = Field(min_length=1)
    source: Path | None = None

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        seen: set[str] = set()
        for rung in self.rungs:
            if rung.name in seen:
                raise ValueError(f"rung name {rung.name!r} appears twice")
            seen.add(rung.name)
        return self

    @cached_property
    def by_name(self) -> dict[str, Rung]:
        return {r.name: r for r in self.rungs}

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rungs]

    def get(self, name: str, *, field: str = "rung") -> Rung:
        try:
            return self.by_name[name]
        except KeyError:
            raise InvalidInput(f"unknown rung {shown(name)}; known rungs: {', '.join(self.names)}", field=field) from None

    def cheapest_first(self, names: list[str] | None = None, prompt_tokens: int = 200) -> list[Rung]:
        """Rungs ordered by the expected cost of answering a prompt of this size at their default length."""
        rungs = [self.get(n) for n in names] if names is not None else list(self.rungs)
        return sorted(rungs, key=lambda r: (r.cost(prompt_tokens, r.max_tokens), r.name))


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Read and validate a catalogue; ConfigError names the file and every problem in it."""
    path = Path(path) if path else DEFAULT_CATALOGUE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalogue {path} does not exist; set ESCALON_CATALOGUE to a rung catalogue YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"catalogue {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "rungs" not in raw:
        raise ConfigError(f"catalogue {path} must be a mapping with a 'rungs' list")
    for rung in raw.get("rungs") or []:
        if isinstance(rung, dict) and rung.get("benchmark") and not Path(rung["benchmark"]).is_absolute():
            rung["benchmark"] = str((path.parent / rung["benchmark"]).resolve())
    try:
        return Catalogue(rungs=raw["rungs"], source=path)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"catalogue {path} is invalid — {problems}") from None


# ---- rungs promoted at run time (distillation) ------------------------------------------------------------
#
# A distilled student that beats the rung it targets is registered in an overlay file next to the data
# (<data_dir>/catalogue.promoted.yaml, the same `rungs:` format). Services keep their configured catalogue
# and add the overlay's rungs: serving loads a new rung on first sight, the router routes to it, with no
# restart. A promoted rung never replaces a configured rung of the same name (the configured one wins).

PROMOTED_FILE = "catalogue.promoted.yaml"


def promoted_path(data_dir: Path | str) -> Path:
    """Where promoted rungs are registered for services sharing this data dir."""
    return Path(data_dir).expanduser() / PROMOTED_FILE


def load_promoted(path: Path | str) -> tuple[Rung, ...]:
    """The rungs of an overlay file; none when it does not exist. ConfigError when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return ()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return tuple(Rung.model_validate(r) for r in raw.get("rungs") or [])
    except (yaml.YAMLError, ValidationError, AttributeError, TypeError) as exc:
        raise ConfigError(f"promoted rungs file {path} is invalid: {exc}") from None


def register_promoted(path: Path | str, rung: Rung) -> Path:
    """Add (or replace, by name) one rung in the overlay: read-modify-write under a file lock, then an atomic
    rename, so concurrent promotions do not lose each other and readers never see half a file."""
    import fcntl
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rungs = [r for r in load_promoted(path) if r.name != rung.name] + [rung]
        text = yaml.safe_dump({"rungs": [r.model_dump(mode="json", exclude_none=True) for r in rungs]},
                              sort_keys=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return path


def with_rungs(catalogue: Catalogue, extra: tuple[Rung, ...] | list[Rung]) -> Catalogue:
    """The catalogue plus rungs it does not already name (a configured rung wins over a promoted one)."""
    added = [r for r in extra if r.name not in catalogue.by_name]
    if not added:
        return catalogue
    return Catalogue(rungs=(*catalogue.rungs, *added), source=catalogue.source)


class LiveCatalogue:
    """A service's configured catalogue plus the promoted rungs, re-read when the overlay file changes.

    `current()` costs one stat() (at most every `check_interval_s`); a broken overlay keeps the last good one.
    """

    def __init__(self, base: Catalogue, overlay: Path | str | None, check_interval_s: float = 0.5) -> None:
        self.base = base
        self.overlay = Path(overlay) if overlay else None
        self.check_interval_s = check_interval_s
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._catalogue = base
        self.promoted: tuple[Rung, ...] = ()

    def current(self) -> Catalogue:
        import logging
        import time

        if self.overlay is None:
            return self._catalogue
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return self._catalogue
        self._checked = now
        try:
            st = self.overlay.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return self._catalogue
        try:
            promoted = load_promoted(self.overlay)
        except ConfigError as exc:
            logging.getLogger(__name__).warning("%s; keeping the rungs promoted before", exc)
            return self._catalogue
        self._stamp = stamp
        self.promoted = tuple(r for r in promoted if r.name not in self.base.by_name)
        self._catalogue = with_rungs(self.base, self.promoted)
        return self._catalogue
