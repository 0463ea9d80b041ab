"""The chart's side of the route log and API keys: every Escalon pod gets Escalon's database (the bundled
PostgreSQL or an external URL), the profile and auth mode, the route log's settings and shared rate limits."""

from __future__ import annotations

import pytest

from chartkit import ChartRenderer, Rendered
from test_chart_contents import container, env_of

pytestmark = pytest.mark.unit


def _envs(rendered: Rendered) -> dict[str, dict]:
    return {d["metadata"]["name"].rsplit("-", 1)[-1]: env_of(container(d)) for d in rendered.kind("Deployment")
            if len(d["spec"]["template"]["spec"]["containers"]) == 1}


def test_router_distill_and_gateway_share_the_database_and_refuse_to_run_open_in_production(prod: Rendered) -> None:
    envs = _envs(prod)
    for name in ("router", "distill", "gateway"):
        env = envs[name]
        assert env["ESCALON_DATABASE_URL"]["secretKeyRef"] == {"name": "escalon-database", "key": "url"}, name
        assert env["ESCALON_PROFILE"] == "production" and env["ESCALON_AUTH"] == "auto"
        assert env["ESCALON_REDIS_URL"]["secretKeyRef"] == {"name": "escalon-redis", "key": "url"}
        assert env["ESCALON_ROUTE_LOG_PROMPTS"] == "false" and env["ESCALON_ROUTE_LOG_RETENTION_DAYS"] == "30"
    assert envs["gateway"]["ESCALON_GATEWAY_TRAFFIC_SOURCE"] == "route_log"


def test_dev_may_run_open_on_the_bundled_postgresql_and_redis(dev: Rendered, chart: ChartRenderer) -> None:
    env = _envs(dev)["router"]
    assert env["ESCALON_PROFILE"] == "dev"
    assert "$(ESCALON_PGPASSWORD)@" in env["ESCALON_DATABASE_URL"]
    assert env["ESCALON_PGPASSWORD"]["secretKeyRef"]["key"] == "password"
    assert env["ESCALON_REDIS_URL"].endswith("-redis:6379/2")
    alone = chart.render(chart.values(redis={"enabled": False}, distill={"broker": {"kind": "rabbitmq", "url": "amqp://b//"}},
                                      routeLog={"enabled": True, "storePrompts": True, "retentionDays": 7}))
    env = _envs(alone)["router"]
    assert "ESCALON_REDIS_URL" not in env and env["ESCALON_ROUTE_LOG_PROMPTS"] == "true"
