"""Which rungs the front reaches through Ray Serve and which it calls directly (escalon.serving.tiers), and how
a cancelled or timed-out call is cancelled through Ray. Ray itself is faked here (a handle whose response
records cancel()); tests/integration/serving/ runs the real thing."""

from __future__ import annotations

import asyncio

import pytest

from escalon.backends import GenerateParams
from escalon.config import load_settings
from escalon.errors import RungUnavailable
from escalon.serving.settings import ServingSettings
from escalon.serving.tiers import InProcessTiers, RayTiers, SplitTiers, make_tiers, through_ray
from servingkit import openai_rung, replay_rung, smollm_rung

pytestmark = pytest.mark.unit


def test_only_engines_that_compute_here_go_through_ray(tmp_path):
    ray = load_settings(ServingSettings, data_dir=tmp_path)
    assert through_ray(smollm_rung(), ray) and through_ray(smollm_rung(backend="hf"), ray)
    assert not through_ray(replay_rung(), ray) and not through_ray(openai_rung("http://127.0.0.1:1/v1"), ray)
    every = load_settings(ServingSettings, data_dir=tmp_path, direct_rungs=False)
    assert through_ray(replay_rung(), every)
    inprocess = load_settings(ServingSettings, data_dir=tmp_path, runtime="inprocess")
    assert not through_ray(smollm_rung(), inprocess)
    assert isinstance(make_tiers([replay_rung()], inprocess), InProcessTiers)
    assert isinstance(make_tiers([replay_rung()], ray), SplitTiers)


async def test_a_front_of_replay_rungs_answers_without_starting_ray(tmp_path, monkeypatch):
    import escalon.serving.tiers as tiers_module

    def no_ray():
        raise AssertionError("Ray was imported for a rung that does no local compute")

    monkeypatch.setattr(tiers_module, "_import_ray", no_ray)
    import pandas as pd

    recorded = pd.read_parquet(replay_rung().benchmark)
    prompt = recorded[recorded["model"] == replay_rung().model].iloc[0]["prompt"]
    tiers = make_tiers([replay_rung()], load_settings(ServingSettings, data_dir=tmp_path))
    await tiers.start()
    try:
        result = await tiers.generate("mixtral-8x7b", GenerateParams(prompt=prompt, max_tokens=8), timeout=5)
        assert result.samples[0].text and result.reference_score is not None
        assert (await tiers.health("mixtral-8x7b"))[0] and not (await tiers.health("nope"))[0]
    finally:
        await tiers.close()


class _Response:
    """A Serve DeploymentResponse that takes `seconds`; records cancel()."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.cancelled = seconds, False

    def __await__(self):
        return asyncio.sleep(self.seconds, result="done").__await__()

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    def __init__(self, seconds: float) -> None:
        self.responses: list[_Response] = []
        self.seconds = seconds
        self.generate = self

    def remote(self, params, carrier):  # noqa: ANN001
        self.responses.append(_Response(self.seconds))
        return self.responses[-1]


async def test_through_ray_a_cancelled_or_timed_out_call_cancels_the_serve_request(tmp_path):
    tiers = RayTiers([smollm_rung()], load_settings(ServingSettings, data_dir=tmp_path))
    handle = tiers.handles["smollm2-135m"] = _Handle(seconds=5)
    params = GenerateParams(prompt="hi", max_tokens=8)
    call = asyncio.create_task(tiers.generate("smollm2-135m", params, timeout=10))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert handle.responses[-1].cancelled
    with pytest.raises(RungUnavailable, match="did not answer within 0.05s"):
        await tiers.generate("smollm2-135m", params, timeout=0.05)
    assert handle.responses[-1].cancelled
    handle.seconds = 0
    assert await tiers.generate("smollm2-135m", params, timeout=1) == "done"
    assert not handle.responses[-1].cancelled
