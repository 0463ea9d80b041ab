"""A real router → serving (replay rungs, in-process runtime) → judge stack on free ports, for the router's
in-process vs gRPC equivalence tests."""

import contextlib

from escalon.grpc import running_server
from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings


@contextlib.asynccontextmanager
async def replay_router(folder, catalogue, artefact):
    """Yields the router's address; it plans with the artefact folder."""
    async with contextlib.AsyncExitStack() as stack:
        serving_settings = ServingSettings(port=0, runtime="inprocess", data_dir=folder / "data")
        serving = await stack.enter_async_context(
            running_server(ServingService(serving_settings, catalogue), serving_settings, "escalon-serving"))
        judge_settings = JudgeSettings(port=0)
        judge = await stack.enter_async_context(
            running_server(JudgeService(judge_settings), judge_settings, "escalon-judge"))
        router_settings = RouterSettings(port=0, serving_address=serving.address, judge_address=judge.address,
                                         artefact=artefact, data_dir=folder / "data")
        router = await stack.enter_async_context(
            running_server(RouterService(router_settings, catalogue), router_settings, "escalon-router"))
        yield router.address
