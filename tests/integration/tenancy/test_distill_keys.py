"""API keys at the Distill API: the same interceptor as the router's, scope `jobs`."""

from __future__ import annotations

import grpc
import pytest

from escalon.db.engine import ready_database
from escalon.db.keys import create_key
from escalon.db.settings import DatabaseSettings
from escalon.distill.servicer import DistillService
from escalon.distill.settings import DistillSettings
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.grpc import running_server

pytestmark = pytest.mark.integration


async def test_the_distill_api_wants_a_key_with_the_jobs_scope(tmp_path):
    db = DatabaseSettings(data_dir=tmp_path)
    engine = ready_database(db.database_url)
    _, jobs_key = create_key(engine, tenant="ops", scopes=["jobs"])
    _, route_key = create_key(engine, tenant="acme")
    settings = DistillSettings(port=0, data_dir=tmp_path, broker_url="memory://")
    async with running_server(DistillService(settings, database=db), settings, "escalon-distill") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = distill_pb2_grpc.DistillServiceStub(channel)

            async def list_jobs(key=None):
                metadata = (("authorization", f"Bearer {key}"),) if key else None
                return await stub.ListJobs(distill_pb2.ListJobsRequest(page_size=5), metadata=metadata, timeout=10)

            assert list((await list_jobs(jobs_key)).jobs) == []
            for key, code, text in ((None, grpc.StatusCode.UNAUTHENTICATED, "no API key"),
                                    (route_key, grpc.StatusCode.PERMISSION_DENIED, "needs jobs")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await list_jobs(key)
                assert err.value.code() == code and text in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitJob(distill_pb2.SubmitJobRequest(kind="harvest"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    engine.dispose()
