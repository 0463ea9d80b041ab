"""The replay backend answers from recorded benchmark outputs, and says clearly when it cannot."""

from __future__ import annotations

import pandas as pd
import pytest

from escalon.errors import ConfigError, RungUnavailable
from escalon.backends import GenerateParams
from escalon.backends.replay import ReplayBackend
from servingkit import DEMO_BENCHMARK, MIXTRAL, replay_rung

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def recorded() -> dict:
    table = pd.read_parquet(DEMO_BENCHMARK)
    return table[table["model"] == MIXTRAL].iloc[0].to_dict()


@pytest.fixture(scope="module")
def backend() -> ReplayBackend:
    backend = ReplayBackend(replay_rung())
    backend.load()
    return backend


async def test_a_recorded_prompt_returns_the_recorded_answer_cost_and_score(backend, recorded):
    result = await backend.generate(GenerateParams(prompt=recorded["prompt"], max_tokens=64, n=5, temperature=1))
    assert [s.text for s in result.samples] == [recorded["response"]]  # n capped to 1: one recording
    assert result.cost_usd == pytest.approx(recorded["cost_usd"])
    assert result.reference_score == recorded["score"]
    assert result.input_tokens == -(-len(recorded["prompt"]) // 4)
    assert result.output_tokens == result.samples[0].output_tokens == -(-len(recorded["response"]) // 4)
    assert result.samples[0].finish_reason == "stop" and result.samples[0].logprobs == []


async def test_lookup_ignores_whitespace_differences(backend, recorded):
    rewrapped = "  " + recorded["prompt"].replace(" ", "\n", 3).replace(". ", ".   ") + "\n"
    result = await backend.generate(GenerateParams(prompt=rewrapped, max_tokens=64))
    assert result.samples[0].text == recorded["response"]


async def test_an_unrecorded_prompt_is_unavailable_naming_model_and_file(backend):
    with pytest.raises(RungUnavailable) as err:
        await backend.generate(GenerateParams(prompt="What is the capital of France?", max_tokens=8))
    assert f"prompt not recorded for {MIXTRAL} in {DEMO_BENCHMARK}" in str(err.value)


async def test_a_score_without_a_response_is_unavailable_not_an_empty_answer(tmp_path, recorded):
    path = tmp_path / "benchmark.parquet"
    pd.DataFrame([recorded | {"response": None}]).to_parquet(path)
    backend = ReplayBackend(replay_rung(benchmark=path))
    backend.load()
    with pytest.raises(RungUnavailable, match="recorded score but no recorded response for gsm8k:"):
        await backend.generate(GenerateParams(prompt=recorded["prompt"], max_tokens=8))


def test_a_benchmark_without_the_rungs_model_fails_at_load_listing_the_models_it_has():
    with pytest.raises(ConfigError, match="no rows for model 'gpt-9'.*gpt-4-1106-preview"):
        ReplayBackend(replay_rung(model="gpt-9")).load()


def test_unusable_files_fail_at_load_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ReplayBackend(replay_rung(benchmark=tmp_path / "missing.parquet")).load()
    path = tmp_path / "thin.parquet"
    pd.DataFrame({"prompt": ["hi"], "model": [MIXTRAL]}).to_parquet(path)
    with pytest.raises(ConfigError, match="lacks columns prompt_id, task, split, response, score, cost_usd"):
        ReplayBackend(replay_rung(benchmark=path)).load()


async def test_health_reports_what_it_replays(backend):
    assert await backend.health() == f"replaying 40 recorded answers of {MIXTRAL} (one sample per prompt)"
