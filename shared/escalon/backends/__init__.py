"""Model engines behind the rungs. Each module is imported only when a rung needs it, so the gRPC front
(which never runs a model under Ray) does not pay for torch and transformers."""

from __future__ import annotations

from pathlib import Path

from escalon.registry import Rung

from .base import Backend, GenerateParams, GenerateResult, Sample, TokenLogprob

__all__ = ["Backend", "GenerateParams", "GenerateResult", "Sample", "TokenLogprob", "make_backend"]


def make_backend(rung: Rung, *, models_dir: Path, torch_threads: int | None = None) -> Backend:
    """The backend for a rung, not yet loaded (call `load()`, which may take seconds)."""
    if rung.backend in ("local-gguf", "hf"):
        from .local import LocalBackend

        return LocalBackend(rung, models_dir=models_dir, torch_threads=torch_threads)
    if rung.backend == "openai":
        from .openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(rung)
    if rung.backend == "replay":
        from .replay import ReplayBackend

        return ReplayBackend(rung)
    raise ValueError(f"rung {rung.name}: no backend named {rung.backend!r}")
