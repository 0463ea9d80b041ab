"""The token bucket, the traffic window and the frontier, and the gateway's settings."""

from __future__ import annotations

import json

import pytest

from escalon.config import load_settings
from escalon.errors import ConfigError
from escalon.gateway.limits import TokenBuckets
from escalon.gateway.settings import GatewaySettings
from escalon.gateway.traffic import (
    AttemptRecord,
    RouteRecord,
    TrafficWindow,
    frontier_from_report,
    mark_pareto,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_the_burst_then_one_per_interval_per_key():
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(0.5)  # next token in half a second
    assert buckets.take("b") == 0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0 and buckets.take("a") > 0
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, not beyond


def test_no_rate_means_no_limit_and_buckets_stay_bounded():
    assert all(TokenBuckets(rate=0, burst=1).take("k") == 0 for _ in range(100))
    buckets = TokenBuckets(rate=1, burst=1, clock=Clock(), max_buckets=10)
    for i in range(50):
        buckets.take(f"client-{i}")
    assert len(buckets._buckets) == 10


def _route(at: float, model: str, rung: str, confidence: float, attempts: list[tuple[str, bool, bool, float, float]]):
    return RouteRecord(at=at, model=model, rung=rung, confidence=confidence,
                       cost_usd=sum(a[4] for a in attempts), attempts=tuple(AttemptRecord(*a) for a in attempts))


def test_the_window_reports_share_escalation_confidence_and_spend_per_rung():
    clock = Clock(10_000)
    window = TrafficWindow(window_s=3600, max_routes=100, clock=clock)
    window.add(_route(9_990, "escalon/auto", "gpt-4", 0.95, [("small", True, False, 0.2, 0.001),
                                                                ("replay", False, False, 0.0, 0.0),
                                                                ("gpt-4", True, True, 0.95, 0.01)]))
    window.add(_route(9_000, "escalon/auto", "small", 0.85, [("small", True, True, 0.85, 0.001)]))
    window.add(_route(5_000, "escalon/auto", "small", 0.9, [("small", True, True, 0.9, 0.001)]))  # too old
    window.add_error(503)
    summary = window.summary()
    assert summary["routes"] == 2 and summary["total_cost_usd"] == pytest.approx(0.012)
    assert summary["escalation_rate"] == 0.5 and summary["errors"] == {"503": 1}
    small, gpt4 = summary["rungs"]["small"], summary["rungs"]["gpt-4"]
    assert (small["answered"], small["tried"], small["escalated"], small["escalation_rate"]) == (1, 2, 1, 0.5)
    assert small["share"] == 0.5 and small["spend_usd"] == pytest.approx(0.002)
    assert small["confidence_histogram"][2] == 1 and small["confidence_histogram"][8] == 1
    assert summary["rungs"]["replay"]["skipped"] == 1 and summary["rungs"]["replay"]["escalation_rate"] is None
    assert gpt4["escalation_rate"] == 0.0
    assert sum(summary["spend_per_bucket_usd"]) == pytest.approx(0.012)
    assert summary["spend_per_bucket_usd"][-1] == pytest.approx(0.011)  # ten seconds ago: the newest bucket


def test_the_window_keeps_at_most_max_routes():
    window = TrafficWindow(window_s=3600, max_routes=5, clock=Clock(100))
    for i in range(20):
        window.add(_route(100, "m", "r", 0.5, [("r", True, True, 0.5, 1.0)]))
    assert window.summary()["routes"] == 5


def test_the_live_frontier_has_a_point_per_model_with_the_pareto_ones_marked():
    window = TrafficWindow(clock=Clock(100))
    for model, cost, confidence in [("escalon/economy", 0.001, 0.6), ("escalon/economy", 0.003, 0.8),
                                    ("escalon/max-quality", 0.02, 0.95), ("gpt-4", 0.03, 0.9)]:
        window.add(_route(100, model, "r", confidence, [("r", True, True, confidence, cost)]))
    points = {p["name"]: p for p in window.frontier()["points"]}
    assert points["escalon/economy"]["cost_usd"] == pytest.approx(0.002) and points["escalon/economy"]["n"] == 2
    assert [n for n, p in points.items() if p["pareto"]] == ["escalon/economy", "escalon/max-quality"]


def test_pareto_with_ties():
    points = [{"cost_usd": 1, "quality": 0.5}, {"cost_usd": 1, "quality": 0.7}, {"cost_usd": 2, "quality": 0.7}]
    mark_pareto(points)
    assert [p["pareto"] for p in points] == [False, True, False]


def test_the_frontier_from_an_eval_report_or_a_profile_table(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"points": [{"name": "economy", "mean_cost_usd": 0.001, "accuracy": 0.7},
                                             {"name": "max-quality", "cost_usd": 0.01, "quality": 0.9},
                                             {"name": "broken"}]}))
    assert [(p["name"], p["pareto"]) for p in frontier_from_report(report)["points"]] == [
        ("economy", True), ("max-quality", True)]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"format": "escalon.profile/v1", "models": {
        "a": {"mean_cost_usd": 0.1, "accuracy": 0.5}, "b": {"mean_cost_usd": 0.2, "accuracy": 0.4}}}))
    loaded = frontier_from_report(profile)
    assert loaded["quality_label"].startswith("accuracy") and [p["pareto"] for p in loaded["points"]] == [True, False]
    (tmp_path / "odd.json").write_text("[1, 2]")
    for bad in (tmp_path / "missing.json", tmp_path / "odd.json"):
        with pytest.raises(ConfigError, match=bad.name):
            frontier_from_report(bad)


def test_settings_read_keys_and_lists_from_the_environment(monkeypatch):
    monkeypatch.setenv("ESCALON_GATEWAY_API_KEYS", "sk-one, sk-two")
    monkeypatch.setenv("ESCALON_GATEWAY_OPERATING_POINTS", '["cheap", "best"]')
    settings = load_settings(GatewaySettings)
    assert [k.get_secret_value() for k in settings.api_keys] == ["sk-one", "sk-two"]
    assert settings.operating_points == ["cheap", "best"] and settings.port == 8080 and settings.auth_enabled
    assert "sk-one" not in repr(settings)  # keys never show in logs


def test_a_bad_setting_names_its_variable(monkeypatch):
    monkeypatch.setenv("ESCALON_GATEWAY_RATE_LIMIT_RPS", "-1")
    with pytest.raises(ConfigError, match="ESCALON_GATEWAY_RATE_LIMIT_RPS"):
        load_settings(GatewaySettings)
    monkeypatch.delenv("ESCALON_GATEWAY_RATE_LIMIT_RPS")
    for malformed in ('["sk-secret", " "]', '["sk-secret"', '["sk-secret", 3]'):
        monkeypatch.setenv("ESCALON_GATEWAY_API_KEYS", malformed)
        with pytest.raises(ConfigError, match="ESCALON_GATEWAY_API_KEYS") as caught:
            load_settings(GatewaySettings).check_api_keys()  # what `python -m escalon.gateway` runs at start
        assert "sk-secret" not in str(caught.value)  # the message may be logged: keys stay masked
