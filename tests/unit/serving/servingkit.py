"""Rungs the serving unit tests build by hand (the packaged catalogue's shapes, with test-sized limits)."""

from __future__ import annotations

from pathlib import Path

from escalon.registry import Rung

DEMO_BENCHMARK = Path(__file__).resolve().parents[3] / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def replay_rung(**overrides) -> Rung:
    fields = dict(name="mixtral-8x7b", family="mistral", backend="replay", model=MIXTRAL, benchmark=DEMO_BENCHMARK,
                  price={"input_per_1m": 0.24, "output_per_1m": 0.24}, context_limit=32768)
    return Rung(**(fields | overrides))


def smollm_rung(**overrides) -> Rung:
    fields = dict(name="smollm2-135m", family="smollm", backend="local-gguf", model="smollm2-135m-instruct",
                  price={"input_per_1m": 0.005, "output_per_1m": 0.005}, max_tokens=16)
    return Rung(**(fields | overrides))


def openai_rung(base_url: str, **overrides) -> Rung:
    fields = dict(name="remote", family="openai", backend="openai", model="gpt-test", base_url=base_url,
                  price={"input_per_1m": 1.0, "output_per_1m": 2.0}, timeout_s=5,
                  retries={"attempts": 1})  # one try unless a test asks for retries (test_rung_resilience.py)
    return Rung(**(fields | overrides))
