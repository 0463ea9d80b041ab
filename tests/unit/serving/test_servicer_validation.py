"""The servicer's logic called directly (no server): validation, pricing, and the rung list.

It runs over the in-process runtime with a real replay rung, so no model and no Ray are involved.
"""

from __future__ import annotations

import pandas as pd
import pytest

from escalon.config import load_settings
from escalon.errors import ConfigError, InvalidInput
from escalon.gen.serving.v1 import serving_pb2
from escalon.registry import Catalogue
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings
from servingkit import DEMO_BENCHMARK, MIXTRAL, replay_rung, smollm_rung

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
async def service(tmp_path_factory):
    catalogue = Catalogue(rungs=(replay_rung(), smollm_rung()))
    settings = load_settings(ServingSettings, runtime="inprocess", rungs="mixtral-8x7b", max_prompt_chars=5000,
                             data_dir=tmp_path_factory.mktemp("serving-unit"))
    service = ServingService(settings, catalogue)
    await service.start()
    yield service
    await service.close()


@pytest.fixture(scope="module")
def recorded() -> dict:
    table = pd.read_parquet(DEMO_BENCHMARK)
    return table[table["model"] == MIXTRAL].iloc[0].to_dict()


def request(**fields) -> serving_pb2.GenerateRequest:
    return serving_pb2.GenerateRequest(**({"rung": "mixtral-8x7b", "prompt": "What is 2 + 2?"} | fields))


@pytest.mark.parametrize("fields, field, says", [
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": " \n "}, "prompt", "must not be empty"),
    ({"prompt": "x" * 5001}, "prompt", "5001 characters exceeds the limit of 5000 (ESCALON_SERVING_MAX_PROMPT_CHARS)"),
    ({"n": 33}, "n", "between 1 and 32"),
    ({"n": -1}, "n", "between 1 and 32"),
    ({"temperature": 2.5}, "temperature", "between 0 and 2, got 2.5"),
    ({"temperature": float("nan")}, "temperature", "between 0 and 2"),
    ({"max_tokens": -1}, "max_tokens", "got -1"),
    ({"max_tokens": 40000}, "max_tokens", "context limit of 32768"),
    ({"top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
    ({"stop": ["ok", ""]}, "stop", "non-empty"),
    ({"answer_type": 42}, "answer_type", "unknown answer type 42; known: ANSWER_TYPE_UNSPECIFIED"),
    ({"rung": ""}, "rung", "required; served rungs: mixtral-8x7b"),
    ({"rung": "gpt-9"}, "rung", "unknown rung 'gpt-9'; known rungs: mixtral-8x7b, smollm2-135m"),
    ({"rung": "smollm2-135m"}, "rung", "in the catalogue but not served here; served rungs: mixtral-8x7b"),
])
async def test_bad_requests_name_the_field(service, fields, field, says):
    with pytest.raises(InvalidInput) as err:
        await service.Generate(request(**fields), None)
    assert err.value.field == field and says in str(err.value)


async def test_a_prompt_over_the_rungs_context_is_rejected_before_any_call(tmp_path):
    catalogue = Catalogue(rungs=(replay_rung(context_limit=100),))
    service = ServingService(load_settings(ServingSettings, runtime="inprocess", data_dir=tmp_path), catalogue)
    with pytest.raises(InvalidInput, match="prompt: about 250 tokens .* context limit of 100 tokens"):
        await service.Generate(request(prompt="x" * 1000), None)  # tiers never started: no call was made


async def test_stream_requests_name_fields_under_request(service):
    with pytest.raises(InvalidInput) as err:
        await anext(service.GenerateStream(serving_pb2.GenerateStreamRequest(request=request(n=3)), None))
    assert err.value.field == "request.n" and "use Generate for n > 1" in str(err.value)
    with pytest.raises(InvalidInput) as err:
        await anext(service.GenerateStream(serving_pb2.GenerateStreamRequest(request=request(prompt="")), None))
    assert err.value.field == "request.prompt"


async def test_replay_answers_carry_the_recorded_cost_and_reference_score(service, recorded):
    response = await service.Generate(request(prompt=recorded["prompt"], n=3), None)
    assert response.rung == "mixtral-8x7b" and [s.text for s in response.samples] == [recorded["response"]]
    assert response.usage.cost_usd == pytest.approx(recorded["cost_usd"])
    assert response.HasField("reference_score") and response.reference_score == recorded["score"]
    assert response.latency_ms > 0


async def test_list_models_lists_served_rungs_with_prices_and_health(service):
    listed = (await service.ListModels(serving_pb2.ListModelsRequest(), None)).rungs
    assert [r.name for r in listed] == ["mixtral-8x7b"]
    rung = listed[0]
    assert (rung.backend, rung.family, rung.input_usd_per_1m, rung.context_limit) == ("replay", "mistral", 0.24, 32768)
    assert rung.healthy and rung.status.startswith("replaying 40 recorded answers")


def test_serving_an_unknown_rung_is_a_configuration_error(tmp_path):
    settings = load_settings(ServingSettings, runtime="inprocess", rungs="mixtral-8x7b,gpt-9", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="ESCALON_SERVING_RUNGS names rungs not in the catalogue: gpt-9"):
        ServingService(settings, Catalogue(rungs=(replay_rung(),)))
