"""The chart's metrics: every pod's /metrics port, the Prometheus Operator objects and the Grafana dashboard
behind their toggles, autoscaling on calls in flight, and PromQL that names only metrics Escalon exports."""

from __future__ import annotations

import json
import re

import pytest

from chartkit import CHART_DIR, ChartRenderer, Rendered, validate_manifest
from escalon.distill.metrics import job_counts, queue_lengths
from escalon.metrics import Metrics

pytestmark = pytest.mark.unit

ALL_ON = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                      "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
PREFIXES = {"router": "ESCALON_ROUTER_", "judge": "ESCALON_JUDGE_", "serving": "ESCALON_SERVING_",
            "distill": "ESCALON_DISTILL_", "gateway": "ESCALON_GATEWAY_"}


def exported_series() -> set[str]:
    """Every series name escalon.metrics can expose (histograms as _bucket/_sum/_count, counters as _total)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    for collector in (job_counts(None), queue_lengths(None)):  # read at scrape time; describe() reads nothing
        names.update(family.name for family in collector.describe())
    return names | {"up"}


def series_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers followed by a label matcher or a range."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))


@pytest.fixture(scope="module")
def monitored(chart: ChartRenderer) -> Rendered:
    return chart.render(ALL_ON)


def test_every_pod_serves_metrics_on_the_port_its_settings_read(chart: ChartRenderer):
    rendered = chart.render({})
    for deployment in rendered.kind("Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": 9464} in container["ports"], component
        env = {e["name"]: e.get("value") for e in container["env"]}
        prefix = "ESCALON_DISTILL_" if component.startswith("worker-") else PREFIXES[component]
        assert env[f"{prefix}METRICS_PORT"] == "9464", component
    for service in rendered.kind("Service"):
        if service["metadata"]["labels"].get("app.kubernetes.io/component") in PREFIXES:
            assert any(p["name"] == "metrics" and p["targetPort"] == "metrics" for p in service["spec"]["ports"])
    policy = rendered.get("NetworkPolicy", "escalon-metrics")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert not rendered.kind("ServiceMonitor") and not rendered.kind("PrometheusRule")  # opt-in


def test_metrics_off_leaves_no_port_and_no_variable(chart: ChartRenderer):
    rendered = chart.render({"metrics": {"enabled": False}})
    for deployment in rendered.kind("Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert all(p["name"] != "metrics" for p in container.get("ports", []))
        assert not any(e["name"].endswith("METRICS_PORT") for e in container["env"])
    assert "escalon-metrics" not in rendered.names("NetworkPolicy")


def test_monitoring_objects_render_valid(monitored: Rendered):
    for obj in monitored.objects:
        validate_manifest(obj)
    monitor = monitored.get("ServiceMonitor", "escalon")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["escalon"]}
    # it selects the services, and the services carry the port it names
    selected = [s for s in monitored.kind("Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in selected} >= {f"escalon-{c}" for c in PREFIXES}
    workers = monitored.get("PodMonitor", "escalon-workers")
    worker_pods = [d for d in monitored.kind("Deployment") if "escalon.dev/queue" in d["metadata"]["labels"]]
    assert worker_pods and workers["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_alerts_and_dashboard_name_only_metrics_escalon_exports(monitored: Rendered):
    exported = exported_series()
    rules = [r for g in monitored.get("PrometheusRule", "escalon")["spec"]["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    assert {r["alert"] for r in rules if "alert" in r} >= {"EscalonRpcErrors", "EscalonRungCircuitOpen",
                                                            "EscalonDistillBacklog", "EscalonSpendHigh"}
    for rule in rules:
        names = series_in(rule["expr"]) | (set(re.findall(r"escalon:[a-z0-9_:]+", rule["expr"])))
        assert names, rule
        assert names <= exported | recorded, (rule.get("alert") or rule.get("record"), names - exported - recorded)

    config = monitored.get("ConfigMap", "escalon-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["escalon.json"])
    assert dashboard == json.loads((CHART_DIR / "dashboards" / "escalon.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        names = series_in(expr)
        assert names and names <= exported, (expr, names - exported)
    # every rung metric the router exports appears on the dashboard
    on_dashboard = set().union(*(series_in(e) for e in exprs))
    assert {"escalon_rung_attempts_total", "escalon_rung_accepts_total", "escalon_rung_escalations_total",
            "escalon_rung_cost_usd_total", "escalon_rung_circuit_state", "escalon_distill_queue_length",
            "escalon_route_decision_duration_seconds_bucket"} <= on_dashboard


def test_in_flight_autoscaling_through_keda_queries_the_exported_metric(chart: ChartRenderer):
    rendered = chart.render({"metrics": {"autoscaling": {"keda": True}},
                             "serving": {"autoscaling": {"inFlight": {"enabled": True, "targetPerPod": 4}}}})
    scaled = rendered.get("ScaledObject", "escalon-serving")
    validate_manifest(scaled)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "4"
    assert series_in(trigger["metadata"]["query"]) == {"escalon_rpc_server_active_calls"}
    assert 'service="escalon-serving"' in trigger["metadata"]["query"]
    assert "escalon-serving" not in rendered.names("HorizontalPodAutoscaler")  # KEDA owns its HPA
    assert "escalon-router" in rendered.names("HorizontalPodAutoscaler")  # the others stay on CPU


def test_in_flight_autoscaling_without_keda_is_an_hpa_on_a_pods_metric(chart: ChartRenderer):
    rendered = chart.render({"gateway": {"autoscaling": {"inFlight": {"enabled": True, "targetPerPod": 20}}}})
    hpa = rendered.get("HorizontalPodAutoscaler", "escalon-gateway")
    validate_manifest(hpa)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "http_server_active_requests"
    assert metric["pods"]["metric"]["name"] in exported_series()


def test_in_flight_autoscaling_needs_metrics(chart: ChartRenderer):
    with pytest.raises(Exception, match="router.autoscaling.inFlight needs metrics.enabled"):
        chart.render({"metrics": {"enabled": False},
                      "router": {"autoscaling": {"inFlight": {"enabled": True, "targetPerPod": 4}}}})


def test_a_tiers_resilience_settings_and_the_price_map_reach_the_catalogue(chart: ChartRenderer, tmp_path):
    import yaml

    from escalon.registry import load_catalogue

    remote = {"family": "openai", "backend": "openai", "model": "gpt-4o-mini", "baseUrl": "https://api.openai.com/v1",
              "contextLimit": 128000, "connectTimeoutSeconds": 3, "firstTokenTimeoutSeconds": 20,
              "retries": {"attempts": 4, "maxRetryAfterSeconds": 10},
              "circuit": {"failures": 5, "cooldownSeconds": 60, "slowCallSeconds": 15}}
    rendered = chart.render({"tiers": {"gpt-4o-mini": remote}})
    path = tmp_path / "catalogue.yaml"
    path.write_text(rendered.get("ConfigMap", "escalon-catalogue")["data"]["catalogue.yaml"])
    rung = load_catalogue(path).get("gpt-4o-mini")
    assert (rung.connect_timeout_s, rung.first_token_timeout_s) == (3, 20)
    assert (rung.retries.attempts, rung.retries.max_retry_after_s, rung.retries.initial_backoff_s) == (4, 10, 0.5)
    assert (rung.circuit.failures, rung.circuit.cooldown_s, rung.circuit.slow_call_s) == (5, 60, 15)
    assert rung.price.input_per_1m == 0.15 and rung.price_source.startswith("genai-prices")
    assert yaml.safe_load(path.read_text())["rungs"][0]["name"] in {"smollm2-135m", "gemma3-270m", "gpt-4o-mini"}


def test_a_local_tier_without_a_price_is_refused(chart: ChartRenderer):
    with pytest.raises(Exception, match="tiers.smollm2-135m: a local-gguf tier needs price"):
        chart.render({"tiers": {"smollm2-135m": {"price": None}}})
