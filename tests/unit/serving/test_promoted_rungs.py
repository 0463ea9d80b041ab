"""Rungs promoted by distillation (<data_dir>/catalogue.promoted.yaml) are served without a restart: the
in-process runtime loads them on first sight, the Ray runtime deploys one more Serve application, and a
promotion that cannot load leaves the other rungs serving. Replay rungs stand in for the student here."""

from __future__ import annotations

import pandas as pd
import pytest

from escalon.config import load_settings
from escalon.errors import InvalidInput
from escalon.gen.serving.v1 import serving_pb2
from escalon.registry import Catalogue, promoted_path, register_promoted
from escalon.serving import tiers as tiers_module
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings
from escalon.serving.tiers import RayTiers
from servingkit import DEMO_BENCHMARK, MIXTRAL, replay_rung

pytestmark = pytest.mark.unit


@pytest.fixture
def prompt() -> str:
    table = pd.read_parquet(DEMO_BENCHMARK)
    return table[table["model"] == MIXTRAL].prompt.iloc[0]


async def test_a_promoted_rung_is_served_on_first_sight_and_a_broken_one_harms_nothing(tmp_path, prompt) -> None:
    settings = load_settings(ServingSettings, runtime="inprocess", data_dir=tmp_path)
    service = ServingService(settings, Catalogue(rungs=(replay_rung(),)))
    await service.start()
    try:
        with pytest.raises(InvalidInput):
            await service.Generate(serving_pb2.GenerateRequest(rung="student", prompt=prompt), None)
        register_promoted(promoted_path(tmp_path), replay_rung(name="broken", benchmark=tmp_path / "missing.parquet"))
        register_promoted(promoted_path(tmp_path), replay_rung(name="student", price={"input_per_1m": 0.01,
                                                                                       "output_per_1m": 0.01}))
        service.live.check_interval_s = 0
        reply = await service.Generate(serving_pb2.GenerateRequest(rung="student", prompt=prompt), None)
        assert reply.rung == "student" and reply.samples[0].text
        listed = await service.ListModels(serving_pb2.ListModelsRequest(), None)
        assert [r.name for r in listed.rungs] == ["mixtral-8x7b", "student"]  # "broken" did not load
        reply = await service.Generate(serving_pb2.GenerateRequest(rung="mixtral-8x7b", prompt=prompt), None)
        assert reply.samples[0].text
    finally:
        await service.close()


async def test_a_promoted_rung_that_could_not_load_is_tried_again_later(tmp_path, prompt) -> None:
    """In a cluster the overlay may arrive before the rung's Serve application (or its weights) is ready."""
    import shutil

    settings = load_settings(ServingSettings, runtime="inprocess", data_dir=tmp_path)
    service = ServingService(settings, Catalogue(rungs=(replay_rung(),)))
    await service.start()
    try:
        late = tmp_path / "late.parquet"
        register_promoted(promoted_path(tmp_path), replay_rung(name="student", benchmark=late))
        service.live.check_interval_s = 0
        with pytest.raises(InvalidInput):  # not loadable yet: not served
            await service.Generate(serving_pb2.GenerateRequest(rung="student", prompt=prompt), None)
        shutil.copy(DEMO_BENCHMARK, late)  # now it is; the overlay did not change
        with pytest.raises(InvalidInput):  # before the retry time: not tried again on every call
            await service.Generate(serving_pb2.GenerateRequest(rung="student", prompt=prompt), None)
        service._retry_at = 0.0  # the retry time has come
        reply = await service.Generate(serving_pb2.GenerateRequest(rung="student", prompt=prompt), None)
        assert reply.rung == "student" and reply.samples[0].text and service._retry_at is None
    finally:
        await service.close()


async def test_the_ray_runtime_deploys_a_promoted_rung_as_one_more_application(tmp_path, monkeypatch) -> None:
    deployed, handles = [], {}

    class FakeServe:
        @staticmethod
        def run(app, name, route_prefix):
            deployed.append((name, route_prefix))
            handles[name] = f"handle:{name}"

        @staticmethod
        def get_app_handle(name):
            return handles[name]

    monkeypatch.setattr(tiers_module, "_import_ray", lambda: (None, FakeServe))
    monkeypatch.setattr("escalon.serving.deployment.bind_rung", lambda rung, models_dir, threads: ("app", rung.name))
    tiers = RayTiers([replay_rung()], load_settings(ServingSettings, data_dir=tmp_path))
    await tiers.add(replay_rung(name="student"))
    assert deployed == [("student", None)] and tiers.handles["student"] == "handle:student"
    assert [r.name for r in tiers.rungs] == ["mixtral-8x7b", "student"]
