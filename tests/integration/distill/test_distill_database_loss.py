"""The job store's database (PostgreSQL) killed with -9 mid-job and started again: the front answers
UNAVAILABLE meanwhile (never INTERNAL), the running job carries on once the database is back, and no job or
event is lost. Runs its own PostgreSQL on a free port in a temporary folder (skipped when initdb is absent), so
killing it harms nobody else; as root, the server runs as the `postgres` user."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import env_for, profile_request, wait_for, watch

pytestmark = pytest.mark.integration


class Postgres:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self):
        user = self.user
        if user is None:
            return None
        return lambda: (os.setgid(user.pw_gid), os.setuid(user.pw_uid))

    def init(self) -> Postgres:
        self.folder.mkdir(parents=True)
        if self.user:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        done = subprocess.run([shutil.which("initdb"), "-D", str(self.folder / "data"), "-U", "postgres",
                               "--auth=trust", "--no-sync"], capture_output=True, text=True,
                              preexec_fn=self._as_owner(), cwd="/")
        assert done.returncode == 0, done.stderr
        return self

    def start(self) -> Postgres:
        self.proc = subprocess.Popen(
            [shutil.which("postgres"), "-D", str(self.folder / "data"), "-p", str(self.port), "-k", str(self.folder),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=self._as_owner(), cwd="/")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.3)  # accepting connections a moment after the port opens
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("postgres did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            time.sleep(1)  # its backends notice the postmaster is gone and exit


@pytest.fixture
def postgres():
    if not (shutil.which("initdb") and shutil.which("postgres")):
        pytest.skip("PostgreSQL (initdb, postgres) is not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server")
    # Not under pytest's folders: those are private to this user, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="escalon-pg-"))
    os.chmod(folder, 0o755)
    server = Postgres(folder / "pg").init().start()
    yield server
    server.kill()
    shutil.rmtree(folder, ignore_errors=True)


async def test_a_database_killed_mid_job_loses_nothing(postgres, tmp_path, front_factory, worker_factory) -> None:
    env = env_for(tmp_path / "data", ESCALON_DISTILL_DATABASE_URL=postgres.url)
    front = await front_factory(env)
    worker_factory(env)
    await front.stub.SubmitJob(profile_request("through-the-outage", chunk_rows=4, step_delay_s=0.2))
    await wait_for(lambda: (j := front.store.get("through-the-outage")) and j.progress >= 0.2, timeout=60)

    await asyncio.to_thread(postgres.kill)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await front.stub.GetJob(distill_pb2.GetJobRequest(job_id="through-the-outage"), timeout=20)
    with pytest.raises(grpc.aio.AioRpcError) as submit_down:
        await front.stub.SubmitJob(profile_request("sent-while-down"), timeout=20)
    await asyncio.sleep(2)
    await asyncio.to_thread(postgres.start)

    final = (await watch(front.stub, "through-the-outage", timeout=120))[-1]
    again = await front.stub.SubmitJob(profile_request("sent-while-down"), timeout=20)
    after = (await watch(front.stub, "sent-while-down", timeout=120))[-1]
    print(f"\ndatabase killed: GetJob {down.value.code().name} ({down.value.details()[:100]}); SubmitJob "
          f"{submit_down.value.code().name}; job {distill_pb2.JobState.Name(final.state)} after {final.attempts} "
          f"attempt(s); the resubmitted job {distill_pb2.JobState.Name(after.state)}")
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in down.value.details()
    assert submit_down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED, final.error
    assert after.state == distill_pb2.JOB_STATE_SUCCEEDED and again.job.job_id == "sent-while-down"
    listed = await front.stub.ListJobs(distill_pb2.ListJobsRequest(), timeout=20)
    assert sorted(j.job_id for j in listed.jobs) == ["sent-while-down", "through-the-outage"]
