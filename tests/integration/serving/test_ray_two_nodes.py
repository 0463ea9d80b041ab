"""Serving joins an existing Ray cluster (ESCALON_SERVING_RAY_ADDRESS) of two nodes started with Ray's own
cluster utilities; a tier's two replicas land one per node (one CPU each, one CPU per replica); the worker node
is removed while a client calls the tier, and the calls go on on the head's replica.

Slow on a small machine (two raylets, the Serve controller, two replicas: about a minute), so it runs when
ESCALON_TEST_RAY_CLUSTER=1 and is skipped otherwise."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import grpc
import pytest

from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.grpc import running_server
from escalon.offline.stack import DEMO_PROMPT
from escalon.registry import Catalogue, load_catalogue
from escalon.serving.servicer import ServingService
from escalon.serving.settings import ServingSettings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("ESCALON_TEST_RAY_CLUSTER") != "1",
                       reason="a two-node Ray cluster takes about a minute; set ESCALON_TEST_RAY_CLUSTER=1"),
]


async def test_a_node_removed_under_load_leaves_the_tier_answering(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    gpt4 = load_catalogue().get("gpt-4")
    rung = gpt4.model_copy(update={"autoscaling": gpt4.autoscaling.model_copy(update={"min_replicas": 2,
                                                                                        "max_replicas": 2}),
                                   "resources": gpt4.resources.model_copy(update={"num_cpus": 1})})
    settings = ServingSettings(port=0, runtime="ray", ray_address=cluster.address, rungs=["gpt-4"],
                               data_dir=tmp_path, grace_seconds=1)
    seen: Counter[str] = Counter()
    try:
        async with running_server(ServingService(settings, Catalogue(rungs=[rung])), settings, "escalon-serving") as r:
            from ray._private import state  # the GCS's actor table; ray.util.state needs the dashboard, off here

            replicas = [a for a in state.actors().values()
                        if a["State"] == "ALIVE" and "ServeReplica" in a["ActorClassName"]]
            nodes = {a["Address"]["NodeID"] for a in replicas}
            assert len(replicas) == 2 and len(nodes) == 2, replicas  # one replica per node

            async with grpc.aio.insecure_channel(r.address) as channel:
                stub = serving_pb2_grpc.ModelServingServiceStub(channel)
                request = serving_pb2.GenerateRequest(rung="gpt-4", prompt=DEMO_PROMPT)

                async def load(until: float) -> None:
                    while time.monotonic() < until:
                        try:
                            await stub.Generate(request, timeout=10)
                            seen["OK"] += 1
                        except grpc.aio.AioRpcError as exc:
                            seen[exc.code().name] += 1
                        await asyncio.sleep(0.05)

                started = time.monotonic()
                client = asyncio.create_task(load(started + 20))
                await asyncio.sleep(3)
                before = dict(seen)
                await asyncio.to_thread(cluster.remove_node, worker)
                removed_at = time.monotonic()
                await client
                after_ok = seen["OK"] - before.get("OK", 0)
            print(f"\ntwo-node Ray: before removal {before}; overall {dict(seen)}; "
                  f"{after_ok} OK in the {time.monotonic() - removed_at:.0f}s after it")
    finally:
        import ray

        ray.shutdown()  # this process is a driver of the cluster: leave it before the head goes
        cluster.shutdown()
    assert seen["OK"] > 0 and after_ok > 10  # the tier kept answering after its node went
    assert set(seen) <= {"OK", "UNAVAILABLE"} and seen["UNAVAILABLE"] <= 5  # at most the calls on the lost replica
