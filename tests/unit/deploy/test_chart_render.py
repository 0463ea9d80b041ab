"""The chart renders, lints and validates for every environment and for the edge cases.

Rendering uses the real Helm engine (helm-python-sdk); every rendered object is checked against
the Kubernetes schemas (strict: unknown fields fail) or the KubeRay/KEDA CRD schemas in schemas/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from chartkit import (
    CHART_DIR,
    KUBERNETES_VERSION,
    VALUES_DIR,
    ChartRenderer,
    deep_merge,
    helm,
    load_values,
    validate_manifest,
    values_files,
)

pytestmark = pytest.mark.unit

GPU_TIER = {
    "family": "qwen",
    "backend": "hf",
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "price": {"inputPer1M": 0.05, "outputPer1M": 0.1},
    "contextLimit": 32768,
    "accelerator": "gpu",
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetOngoingRequests": 4},
    "resources": {"cpus": 4, "gpus": 1, "memory": "32Gi"},
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
REMOTE_TIER = {
    "family": "openai",
    "backend": "openai",
    "model": "gpt-4o-mini",
    "baseUrl": "https://api.example.com/v1",
    "apiKeyEnv": "OPENAI_API_KEY",
    "price": {"inputPer1M": 0.15, "outputPer1M": 0.6},
    "contextLimit": 128000,
}
ALL_AUTOSCALING_OFF = {
    name: {"autoscaling": {"enabled": False}} for name in ("router", "judge", "serving", "gateway")
} | {"distill": {"workers": {"cpu": {"autoscaling": {"enabled": False}}}}}

# name -> (values files, overrides): the situations the chart must keep rendering valid objects for.
EDGE_CASES: dict[str, tuple[list[Path], dict[str, Any]]] = {
    "chart defaults": ([], {}),
    "a tier added (gpu + remote)": (
        [VALUES_DIR / "values-dev.yaml"],
        {"tiers": {"qwen-7b": GPU_TIER, "gpt-4o-mini": REMOTE_TIER}, "providerKeys": {"existingSecret": "keys"}},
    ),
    "autoscaling off": ([], ALL_AUTOSCALING_OFF),
    "keda on (redis, scale to zero)": (
        [],
        {"distill": {"keda": {"enabled": True}, "workers": {"gpu": {"enabled": True, "autoscaling": {"minReplicas": 0}}}}},
    ),
    "keda on (external rabbitmq)": (
        [],
        {
            "redis": {"enabled": False},
            "distill": {
                "keda": {"enabled": True},
                "broker": {"kind": "rabbitmq", "existingSecret": "broker"},
            },
        },
    ),
    "remote tiers only": (
        [],
        {
            "tiers": {"smollm2-135m": {"enabled": False}, "gemma3-270m": {"enabled": False}, "gpt-4o-mini": REMOTE_TIER},
            "providerKeys": {"existingSecret": "keys"},
        },
    ),
    "minimal (no gateway, distill, bundled services or policies)": (
        [],
        {
            "gateway": {"enabled": False},
            "distill": {"enabled": False},
            "redis": {"enabled": False},
            "postgresql": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "serviceAccount": {"create": False},
        },
    ),
    "promotion in the cluster (RBAC for the promote job)": ([VALUES_DIR / "values-prod.yaml"],
                                                            {"promotion": {"cluster": {"enabled": True}}}),
    "gateway ingress with tls": (
        [VALUES_DIR / "values-dev.yaml"],
        {"gateway": {"ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "tls", "hosts": ["a.example.com"]}]}}},
    ),
}

CASES = {f"{path.name}": ([path], {}) for path in values_files()} | EDGE_CASES


def case_values(case: str) -> dict[str, Any]:
    files, overrides = CASES[case]
    return deep_merge(load_values(*files), overrides)


def test_every_environment_has_a_values_file() -> None:
    assert {p.name for p in values_files()} >= {"values-dev.yaml", "values-prod.yaml"}


@pytest.mark.parametrize("case", list(CASES))
def test_renders_schema_valid_objects(chart: ChartRenderer, case: str) -> None:
    rendered = chart.render(case_values(case))
    assert len(rendered.objects) >= 10, "the chart rendered almost nothing"
    for obj in rendered.objects:
        validate_manifest(obj)
    # Names are unique per kind: a collision would make one object silently replace another.
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


@pytest.mark.parametrize("case", list(CASES))
def test_lints_clean(case: str) -> None:
    report = helm.lint(CHART_DIR, case_values(case), strict=True, kube_version=f"v{KUBERNETES_VERSION}.0")
    assert not report["errors"], report["errors"]
    # Severity 2 is a warning, 3 an error; 1 (info, e.g. "icon is recommended") is allowed.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems


@pytest.mark.parametrize("subchart", ["redis", "postgresql"])
def test_bundled_subcharts_lint_clean(subchart: str) -> None:
    report = helm.lint(CHART_DIR / "charts" / subchart, strict=True)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


def test_install_dry_run_client() -> None:
    """`helm install --dry-run=client` through the SDK: the release machinery accepts the chart."""
    config = helm.Config(storage_driver="memory", namespace="escalon")
    try:
        release = config.install(
            CHART_DIR, "escalon", load_values(VALUES_DIR / "values-dev.yaml"), namespace="escalon", dry_run="client"
        )
    finally:
        config.close()
    assert "kind: RayService" in release["manifest"]
    assert "escalon-tiers" in release["notes"]


@pytest.mark.parametrize("case", list(CASES))
def test_catalogue_is_one_the_services_load(chart: ChartRenderer, case: str, tmp_path: Path) -> None:
    """The ConfigMap's catalogue.yaml passes the services' own loader (escalon.registry)."""
    registry = pytest.importorskip("escalon.registry")
    values = case_values(case)
    configmap = chart.render(values).get("ConfigMap", "escalon-catalogue")
    path = tmp_path / "catalogue.yaml"
    path.write_text(configmap["data"]["catalogue.yaml"])
    catalogue = registry.load_catalogue(path)
    merged = chart.merged_values(values)
    enabled = sorted(name for name, tier in merged["tiers"].items() if tier.get("enabled", True))
    assert sorted(catalogue.names) == enabled


@pytest.mark.parametrize("case", [c for c in CASES if c != "remote tiers only"])
def test_serve_config_is_one_ray_serve_accepts(chart: ChartRenderer, case: str) -> None:
    schema = pytest.importorskip("ray.serve.schema")
    config = pytest.importorskip("ray.serve.config")
    (rayservice,) = chart.render(case_values(case)).kind("RayService")
    serve = schema.ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    assert serve.applications, "a RayService with no Serve application"
    for app in serve.applications:
        assert app.import_path == "escalon.serving.app:build_app"
        assert app.args == {"rung": app.name}
        (deployment,) = app.deployments
        # Serve validates autoscaling bounds only when it deploys; check them here.
        config.AutoscalingConfig(**deployment.autoscaling_config)
