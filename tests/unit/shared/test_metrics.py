"""escalon.metrics without servers: the exposition parses, scrape-time gauges cache and survive a failing read,
the switched-off instruments record nothing, and a taken port is a configuration error naming the variable."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from escalon.errors import ConfigError
from escalon.metrics import CachedGauges, Metrics, NullMetrics, serve_metrics

pytestmark = pytest.mark.unit


def families(metrics: Metrics) -> dict[str, list]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_names_follow_the_otel_conventions_where_they_exist():
    m = Metrics()
    m.rpc_duration.labels("grpc", "escalon.router.v1.RouterService", "Route", "OK").observe(0.02)
    m.http_duration.labels("POST", "/v1/chat/completions", "200").observe(0.5)
    m.tokens.labels("gpt-4", "output").observe(40)
    found = families(m)
    assert {"rpc_server_call_duration_seconds", "http_server_request_duration_seconds",
            "gen_ai_client_token_usage"} <= found.keys()
    (count,) = [s for s in found["rpc_server_call_duration_seconds"] if s.name.endswith("_count")]
    assert count.labels == {"rpc_system": "grpc", "rpc_service": "escalon.router.v1.RouterService",
                            "rpc_method": "Route", "rpc_grpc_status_code": "OK"}


def test_scrape_time_gauges_are_cached_and_keep_their_last_values_when_a_read_fails():
    calls = []

    def read():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("store away")
        return {("profile", "queued"): 3.0}

    m = Metrics()
    m.set_collector("jobs", CachedGauges("escalon_jobs", "jobs", ["escalon_job_kind", "state"], read, ttl_s=0))
    for _ in range(3):
        (sample,) = families(m)["escalon_jobs"]
        assert sample.value == 3.0 and sample.labels == {"escalon_job_kind": "profile", "state": "queued"}
    assert len(calls) == 3  # ttl 0: read every scrape, the failures kept the last good values
    cached = CachedGauges("escalon_cached", "c", ["k"], read, ttl_s=60)
    m.set_collector("jobs", cached)  # replaces the first
    families(m), families(m)
    assert len(calls) == 4 and "escalon_jobs" not in families(m)


def test_switched_off_metrics_record_nothing():
    m = NullMetrics()
    m.rpc_duration.labels("grpc", "s", "m", "OK").observe(1)
    m.serving_in_flight.labels("r").inc()
    assert generate_latest(m.registry) == b""


def test_a_taken_metrics_port_names_its_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"ESCALON_ROUTER_METRICS_PORT: cannot serve /metrics on 127.0.0.1:{port}"):
            serve_metrics(port, setting="ESCALON_ROUTER_METRICS_PORT")
    assert serve_metrics(None) is None
