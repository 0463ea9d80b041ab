"""A job outlives the worker that ran it: SIGKILL mid-job, and the job resumes from its last checkpoint.

Two ways a worker dies, on the default SQLite broker:
  * the whole worker (main process and pool) is killed — a node lost, a pod OOM-killed. kombu's SQLAlchemy
    transport never redelivers a fetched message, so the job store's lease brings it back: a new worker's
    reaper sees the lease expire and requeues the job.
  * only the pool process running the job is killed. `task_reject_on_worker_lost` makes the surviving main
    process put the message back at once, and the claim sees the lease holder's pid is gone.
"""

from __future__ import annotations

import os
import signal

import pytest

from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import GPT4, MIXTRAL, env_for, per_model_accuracy, profile_request, wait_for, watch

pytestmark = pytest.mark.integration

CHUNKS = 20  # 80 rows of the demo sample in chunks of 4


def _checkpoint_steps(store, job_id: str) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for e in store.events(job_id):
        if e.event == "checkpoint":
            steps.setdefault(e.attempt, []).append(e.step)
    return steps


async def test_a_killed_worker_job_resumes_from_its_checkpoint(tmp_path, front_factory, worker_factory) -> None:
    env = env_for(tmp_path / "data")
    front = await front_factory(env)
    first = worker_factory(env, name="-first")
    await front.stub.SubmitJob(profile_request("survivor", chunk_rows=4, step_delay_s=0.25))
    await wait_for(lambda: (j := front.store.get("survivor")) and j.progress >= 0.25, timeout=30)

    first.kill()
    at_kill = front.store.get("survivor")
    done_before = (at_kill.checkpoint or {}).get("chunks_done", 0)
    assert at_kill.state == "RUNNING" and at_kill.attempts == 1 and 5 <= done_before < CHUNKS

    worker_factory(env, name="-second")
    final = (await watch(front.stub, "survivor", timeout=90))[-1]
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED
    assert final.attempts == 2
    assert per_model_accuracy(final) == {GPT4: pytest.approx(0.875), MIXTRAL: pytest.approx(0.375)}

    steps = _checkpoint_steps(front.store, "survivor")
    assert steps[1] == list(range(len(steps[1]))) and len(steps[1]) >= done_before
    assert steps[2] == list(range(len(steps[1]), CHUNKS))  # picks up where the checkpoint left off: nothing redone
    events = [e.event for e in front.store.events("survivor")]
    assert events.count("started") == 2 and "requeued" in events  # brought back by the lease reaper


async def test_a_killed_pool_process_is_requeued_at_once(tmp_path, front_factory, worker_factory) -> None:
    # A long lease: if the job comes back quickly it was the worker's own requeue, not the reaper.
    env = env_for(tmp_path / "data", ESCALON_DISTILL_LEASE_S="120")
    front = await front_factory(env)
    worker_factory(env)
    await front.stub.SubmitJob(profile_request("child-killed", chunk_rows=4, step_delay_s=0.2))
    await wait_for(lambda: (j := front.store.get("child-killed")) and j.progress >= 0.2, timeout=30)
    started = [e for e in front.store.events("child-killed") if e.event == "started"]
    pool_pid = started[0].metrics["pid"]
    assert pool_pid and pool_pid != os.getpid()

    os.kill(pool_pid, signal.SIGKILL)
    final = (await watch(front.stub, "child-killed", timeout=60))[-1]
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED and final.attempts == 2
    steps = _checkpoint_steps(front.store, "child-killed")
    assert steps[1] + steps[2] == list(range(CHUNKS))
    assert "requeued" not in [e.event for e in front.store.events("child-killed")]
