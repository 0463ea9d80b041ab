"""The same queue behaviour on server brokers: Redis and RabbitMQ (skipped, with the reason, when the server
does not answer). Job store and result store stay SQLite in the temp data dir."""

from __future__ import annotations

import statistics
import time

import pytest

from escalon.gen.distill.v1 import distill_pb2
from tests.integration.distill.stack import (
    AMQP_URL,
    GPT4,
    MIXTRAL,
    PG_URL,
    REDIS_URL,
    env_for,
    per_model_accuracy,
    profile_request,
    server_answers,
    wait_for,
    watch,
)

pytestmark = [pytest.mark.integration, pytest.mark.broker]


@pytest.fixture(params=[pytest.param(REDIS_URL, id="redis"), pytest.param(AMQP_URL, id="rabbitmq")])
def broker_url(request: pytest.FixtureRequest) -> str:
    reason = server_answers(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


async def test_jobs_run_once_through_the_broker(broker_url, tmp_path, front_factory, worker_factory) -> None:
    env = env_for(tmp_path / "data", broker_url)
    front = await front_factory(env)
    worker_factory(env, "--queues", "cpu,gpu")

    submitted = await front.stub.SubmitJob(profile_request("via-broker", chunk_rows=10, step_delay_s=0.02))
    duplicate = await front.stub.SubmitJob(profile_request("via-broker", chunk_rows=10, step_delay_s=0.02))
    assert submitted.created and not duplicate.created
    updates = await watch(front.stub, "via-broker")
    final = updates[-1]
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED and final.attempts == 1
    assert len({u.progress for u in updates}) >= 3
    assert per_model_accuracy(final) == {GPT4: pytest.approx(0.875), MIXTRAL: pytest.approx(0.375)}
    assert [e.event for e in front.store.events("via-broker")].count("started") == 1

    gpu = await front.stub.SubmitJob(
        distill_pb2.SubmitJobRequest(job_id="on-gpu", kind="profile", queue="gpu", params=profile_request().params)
    )
    assert (await watch(front.stub, gpu.job.job_id))[-1].state == distill_pb2.JOB_STATE_SUCCEEDED

    # submit → SUCCEEDED latency of a one-chunk job, read from the store every 2 ms
    latencies = []
    for i in range(8):
        started = time.perf_counter()
        await front.stub.SubmitJob(profile_request(f"latency-{i}"))
        await wait_for(lambda i=i: front.store.get(f"latency-{i}").state == "SUCCEEDED", interval=0.002)
        latencies.append(time.perf_counter() - started)
    print(
        f"\n{broker_url.split(':')[0]}: submit→SUCCEEDED p50 {1000 * statistics.median(latencies):.0f} ms, "
        f"max {1000 * max(latencies):.0f} ms over {len(latencies)} jobs"
    )


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose connections live in a throwaway schema (dropped afterwards)."""
    import uuid

    import psycopg

    plain = PG_URL.replace("+psycopg", "")
    schema = f"distill_it_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(plain, connect_timeout=2) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {str(exc).strip().splitlines()[0]}")
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(plain) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_everything_on_postgresql(pg_url, tmp_path, front_factory, worker_factory) -> None:
    """Broker (kombu's SQLAlchemy transport), result store and job store all in one PostgreSQL schema."""
    env = env_for(
        tmp_path / "data",
        f"sqla+{pg_url}",
        ESCALON_DISTILL_DATABASE_URL=pg_url,
        ESCALON_DISTILL_RESULT_BACKEND=f"db+{pg_url}",
    )
    front = await front_factory(env)
    worker_factory(env)
    await front.stub.SubmitJob(profile_request("on-postgres", chunk_rows=20))
    final = (await watch(front.stub, "on-postgres"))[-1]
    assert final.state == distill_pb2.JOB_STATE_SUCCEEDED and final.attempts == 1
    assert per_model_accuracy(final) == {GPT4: pytest.approx(0.875), MIXTRAL: pytest.approx(0.375)}
    assert front.store.dialect == "postgresql"
