"""Closing the loop: a distilled student that beats the rung it targets is promoted, and — with no restart —
serving loads it and the Router API answers with it. Real servers on free ports: router → serving
(in-process runtime) → judge, sharing one data dir with the promote job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import grpc
import pandas as pd
import pytest

from escalon.distill.jobs import LocalContext, validate
from escalon.distill.training.data import by_split, read_items
from escalon.distill.training.lora import StudentModel, TrainConfig
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.registry import load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "serving-models"


async def test_a_promoted_student_answers_through_the_router_without_a_restart(tmp_path, model_cache) -> None:
    data_dir = tmp_path / "data"
    kind, params = validate("harvest", {"source": "synthetic:arith", "n": 40, "seed": 3}, data_dir)
    dataset = Path(kind.run(params, LocalContext(artefact_dir=tmp_path / "harvest"))["artefacts"]["dataset"])
    items = read_items(dataset)
    test_items = by_split(items)["test"][:3]

    # The dear rung the student should replace: recorded answers to the held-out items, all wrong.
    recorded = tmp_path / "recorded.parquet"
    pd.DataFrame([{"prompt_id": i.id, "task": "arith", "split": "test", "prompt": i.prompt, "model": "dear-model",
                   "response": f"#### {int(i.answer) + 1}", "score": 0.0, "cost_usd": 0.01}
                  for i in test_items]).to_parquet(recorded)
    smollm = load_catalogue().get("smollm2-135m").model_dump(mode="json")
    dear = {"name": "dear", "family": "dear", "backend": "replay", "model": "dear-model", "benchmark": str(recorded),
            "price": {"input_per_1m": 10.0, "output_per_1m": 30.0}}
    catalogue_path = tmp_path / "catalogue.yaml"
    catalogue_path.write_text(json.dumps({"rungs": [smollm, dear]}))  # JSON is YAML

    # A student: LoRA steps on the teacher's answers, merged.
    student = StudentModel(load_catalogue().get("smollm2-135m"), models_dir=model_cache, threads=1)
    student.finetune([(i.prompt, "#### " + i.answer) for i in items[:4]], tmp_path / "train",
                     TrainConfig(max_steps=2, batch_size=2, r=4, alpha=8))
    merged = student.save_merged(tmp_path / "student", metadata={"base_rung": "smollm2-135m"})
    del student

    from escalon.registry import Catalogue

    served = Catalogue(rungs=[load_catalogue(catalogue_path).get("dear")])  # serving and router start without it
    async with contextlib.AsyncExitStack() as stack:
        serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=data_dir, model_cache=model_cache,
                                           torch_threads=1)
        serving = await stack.enter_async_context(
            running_server(ServingService(serving_settings, served), serving_settings, "escalon-serving"))
        judge_settings = JudgeSettings(port=0)
        judge = await stack.enter_async_context(
            running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
        router_settings = RouterSettings(port=0, serving_address=serving.address, judge_address=judge.address,
                                         data_dir=data_dir, local_samples=1)
        router = await stack.enter_async_context(
            running_server(RouterService(router_settings, served), router_settings, "escalon-router"))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(router.address))
        route = router_pb2_grpc.RouterServiceStub(channel).Route

        with pytest.raises(grpc.aio.AioRpcError) as err:  # not a rung yet
            await route(router_pb2.RouteRequest(prompt=test_items[0].prompt, pin_rung="arith-student"), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        kind, params = validate("promote", {"student": str(merged), "target": "dear", "data": str(dataset),
                                            "limit": 3, "margin": 0.0, "name": "arith-student", "max_new_tokens": 8,
                                            "torch_threads": 1, "catalogue": str(catalogue_path),
                                            "models_dir": str(model_cache)}, data_dir)
        # As a worker runs it: in a thread of its own (a job function is plain blocking code).
        promotion = await asyncio.to_thread(kind.run, params, LocalContext(artefact_dir=tmp_path / "promote",
                                                                           job_id="promote-1"))
        assert promotion["decision"] == "promoted", promotion["reason"]

        response = await route(router_pb2.RouteRequest(prompt=test_items[0].prompt, pin_rung="arith-student",
                                                       answer_type=AnswerType.ANSWER_TYPE_NUMBER,
                                                       max_tokens=16), timeout=120)
        assert response.rung == "arith-student" and [a.rung for a in response.attempts] == ["arith-student"]
        assert response.attempts[0].samples == 1 and response.attempts[0].answer.strip()

        unpinned = await route(router_pb2.RouteRequest(prompt=test_items[1].prompt, max_tokens=16,
                                                       answer_type=AnswerType.ANSWER_TYPE_NUMBER), timeout=120)
        assert unpinned.attempts[0].rung == "arith-student"  # the cheaper new rung is tried first

        async with grpc.aio.insecure_channel(serving.address) as serving_channel:
            models = await serving_pb2_grpc.ModelServingServiceStub(serving_channel).ListModels(
                serving_pb2.ListModelsRequest(), timeout=30)
        listed = {r.name: r for r in models.rungs}
        assert listed["arith-student"].healthy and listed["arith-student"].backend == "hf"
        assert listed["arith-student"].model == str(merged)
