"""The chart's side of promotion in the cluster: off by default (no account, no Role, workers without a token);
on, the distill workers alone get an account whose Role allows get and patch on the catalogue ConfigMap and the
tiers' RayService, by name, and nothing else; every pod reads promoted rungs from the mounted ConfigMap."""

from __future__ import annotations

import pytest

from chartkit import VALUES_DIR, ChartRenderer, Rendered
from test_chart_contents import container, env_of

pytestmark = pytest.mark.unit


def _pods(rendered: Rendered) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in rendered.kind("Deployment")}


def test_off_by_default(prod: Rendered) -> None:
    assert not rendered_rbac(prod)
    for name, pod in _pods(prod).items():
        assert pod["automountServiceAccountToken"] is False, name
        env = env_of(pod["containers"][0])
        assert "ESCALON_PROMOTED_CATALOGUE" not in env and "ESCALON_PROMOTE_CLUSTER" not in env


def rendered_rbac(rendered: Rendered) -> list[dict]:
    return [o for o in rendered.objects if o["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}]


def test_on_the_workers_alone_may_get_and_patch_the_two_objects(chart: ChartRenderer) -> None:
    rendered = chart.render(chart.values(VALUES_DIR / "values-prod.yaml", promotion={"cluster": {"enabled": True}}))
    [role] = rendered.kind("Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["escalon-catalogue"], "verbs": ["get", "patch"]},
        {"apiGroups": ["ray.io"], "resources": ["rayservices"], "resourceNames": ["escalon-tiers"],
         "verbs": ["get", "patch"]},
    ]
    assert "escalon-catalogue" in rendered.names("ConfigMap") and "escalon-tiers" in rendered.names("RayService")
    [binding] = rendered.kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "escalon-promote"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "escalon-promote", "namespace": "escalon"}]
    assert not rendered.kind("ClusterRole") and not rendered.kind("ClusterRoleBinding")
    for name, pod in _pods(rendered).items():
        env = env_of(pod["containers"][0])
        assert env["ESCALON_PROMOTED_CATALOGUE"] == "/etc/escalon/catalogue.promoted.yaml", name
        if "-worker-" in name:
            assert pod["serviceAccountName"] == "escalon-promote" and pod["automountServiceAccountToken"] is True
            assert env["ESCALON_PROMOTE_CLUSTER"] == "on" and env["ESCALON_PROMOTE_CONFIGMAP"] == "escalon-catalogue"
            assert env["ESCALON_PROMOTE_RAYSERVICE"] == "escalon-tiers"
            assert env["ESCALON_PROMOTE_NAMESPACE"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        else:
            assert pod["serviceAccountName"] != "escalon-promote" and pod["automountServiceAccountToken"] is False


def test_without_local_tiers_the_role_names_no_rayservice(chart: ChartRenderer) -> None:
    remote = {"family": "openai", "backend": "openai", "model": "gpt-4o-mini", "baseUrl": "https://api.example.com/v1",
              "apiKeyEnv": "OPENAI_API_KEY", "price": {"inputPer1M": 0.15, "outputPer1M": 0.6}, "contextLimit": 128000}
    values = chart.values(promotion={"cluster": {"enabled": True}}, providerKeys={"existingSecret": "keys"},
                          tiers={"smollm2-135m": {"enabled": False}, "gemma3-270m": {"enabled": False},
                                 "gpt-4o-mini": remote})
    rendered = chart.render(values)
    [role] = rendered.kind("Role")
    assert [r["resources"] for r in role["rules"]] == [["configmaps"]]
    workers = [p for n, p in _pods(rendered).items() if "-worker-" in n]
    assert workers and all("ESCALON_PROMOTE_RAYSERVICE" not in env_of(p["containers"][0]) for p in workers)
