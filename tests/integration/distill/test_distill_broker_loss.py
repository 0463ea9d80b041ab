"""A broker that dies mid-job loses nothing. The job store, not the broker, holds a job's state: a running job
goes on checkpointing while the broker is down and finishes; a job submitted meanwhile is stored (SubmitJob
says UNAVAILABLE) and the worker's reaper publishes it once the broker is back. Runs its own redis-server on a
free port (skipped when the binary is absent) so killing it harms nobody else."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import env_for, profile_request, wait_for, watch

pytestmark = [pytest.mark.integration, pytest.mark.broker]


class RedisServer:
    """A throwaway redis-server without persistence: a restart comes back empty, as a lost node does."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


async def test_a_broker_that_dies_mid_job_loses_nothing(redis_server, tmp_path, front_factory, worker_factory) -> None:
    env = env_for(tmp_path / "data", redis_server.url)
    front = await front_factory(env)
    worker_factory(env)
    await front.stub.SubmitJob(profile_request("through-the-outage", chunk_rows=4, step_delay_s=0.2))
    await wait_for(lambda: (j := front.store.get("through-the-outage")) and j.state == "RUNNING", timeout=30)

    redis_server.kill()  # the broker is gone, with the running job's unacknowledged message
    while_down = front.store.get("through-the-outage").progress
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await front.stub.SubmitJob(profile_request("sent-while-down"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "submit the same id again" in err.value.details()
    assert front.store.get("sent-while-down").state == "QUEUED"  # stored, not lost

    # The running job does not need the broker: it checkpoints to the job store and finishes.
    done = await wait_for(lambda: (j := front.store.get("through-the-outage")) and j.finished and j, timeout=60)
    assert done.state == "SUCCEEDED" and done.progress > while_down and done.attempts == 1

    redis_server.start()  # back, empty: the worker reconnects and its reaper publishes the unqueued job
    final = (await watch(front.stub, "sent-while-down", timeout=90))[-1]
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED and final.attempts == 1
    assert [e.event for e in front.store.events("through-the-outage")].count("started") == 1
