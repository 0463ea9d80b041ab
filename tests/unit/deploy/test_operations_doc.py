"""docs/operations.md stays true: its commands are rendered, resolved against the chart, or dry-run.

- every `helm install|upgrade|template ... charts/escalon` line is rendered with the real Helm
  engine (its -f files and --set/--set-json values), its objects validated, and what its --set
  values promise (replica bounds, image tag, a new tier...) checked in the result;
- every object a `kubectl` line names (deployment/escalon-router, rayservice escalon-tiers, a label
  selector) exists in what the chart renders for dev or prod;
- manifests written in the page are schema-valid, and tier snippets render;
- `kubectl ... --dry-run=client` lines run for real when kubectl is installed (it needs no cluster).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chartkit import (
    NAMESPACE,
    RELEASE,
    ROOT,
    VALUES_DIR,
    ChartRenderer,
    Rendered,
    deep_merge,
    helm,
    load_values,
    validate_manifest,
)

pytestmark = pytest.mark.unit

DOC = ROOT / "docs" / "operations.md"
OPERATIONS = [
    "Install",
    "Upgrade",
    "Add a tier",
    "Scale one",
    "Roll back",
    "Submit a distillation job from inside the cluster",
    "Read traces and metrics",
    "Drain a GPU node",
]


# ---- reading the page ----------------------------------------------------------------------------


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def shell_lines() -> tuple[list[str], list[str]]:
    """(commands, heredoc bodies) of the page's bash blocks; continuations joined, comments dropped."""
    commands, heredocs = [], []
    for block in fenced_blocks("bash"):
        lines = iter(block.replace("\\\n", " ").splitlines())
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            commands.append(line)
            marker = re.search(r"<<'?(\w+)'?", line)
            if marker:
                body = []
                for inner in lines:
                    if inner.strip() == marker.group(1):
                        break
                    body.append(inner)
                heredocs.append("\n".join(body))
    return commands, heredocs


COMMANDS, HEREDOCS = shell_lines()
HELM_CHART_COMMANDS = [c for c in COMMANDS if c.startswith("helm ") and " charts/escalon" in c]
KUBECTL_COMMANDS = [c for c in COMMANDS if c.startswith("kubectl ")]
DRY_RUNS = [c for c in KUBECTL_COMMANDS if "--dry-run=client" in c]


def parse_helm(command: str) -> dict[str, Any]:
    """The parts of a helm command line that decide what it renders."""
    tokens = shlex.split(command)[1:]
    takes_value = {"-n", "--namespace", "-f", "--values", "--set", "--set-string", "--set-json", "--timeout", "--version"}
    parsed: dict[str, Any] = {"positional": [], "files": [], "sets": [], "flags": set(), "namespace": None}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in takes_value:
            value = tokens[i + 1]
            i += 2
            if token in ("-n", "--namespace"):
                parsed["namespace"] = value
            elif token in ("-f", "--values"):
                parsed["files"].append(value)
            elif token.startswith("--set"):
                parsed["sets"].append((token, value))
            continue
        if token.startswith("-"):
            parsed["flags"].add(token)
        else:
            parsed["positional"].append(token)
        i += 1
    return parsed


def values_of(parsed: dict[str, Any]) -> dict[str, Any]:
    values = load_values(*(ROOT / f for f in parsed["files"]))
    parse = {"--set": helm.parse_set_string, "--set-string": helm.parse_set_string_values, "--set-json": helm.parse_set_json}
    for flag, expression in parsed["sets"]:
        values = deep_merge(values, parse[flag](expression))
    return values


# ---- the page covers the job ---------------------------------------------------------------------


def test_every_operation_has_a_section_with_commands() -> None:
    text = DOC.read_text()
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M))
    for operation in OPERATIONS:
        assert operation in sections, f"docs/operations.md lacks a '## {operation}' section"
        assert "```bash" in sections[operation], f"'{operation}' gives no commands"


def test_the_page_has_commands_to_check() -> None:
    assert len(HELM_CHART_COMMANDS) >= 6 and len(KUBECTL_COMMANDS) >= 15 and DRY_RUNS and HEREDOCS


# ---- helm commands render --------------------------------------------------------------------------


@pytest.mark.parametrize("command", HELM_CHART_COMMANDS, ids=lambda c: c[:100])
def test_helm_command_renders_valid_objects(chart: ChartRenderer, command: str) -> None:
    parsed = parse_helm(command)
    verb, release, chart_path = parsed["positional"][:3]
    assert verb in ("install", "upgrade", "template")
    assert (release, chart_path, parsed["namespace"]) == (RELEASE, "charts/escalon", NAMESPACE)
    assert "--reuse-values" not in parsed["flags"], "pass the environment's values file instead"
    for path in parsed["files"]:
        assert (ROOT / path).parent == VALUES_DIR and (ROOT / path).is_file(), path
    rendered = chart.render(values_of(parsed))
    for obj in rendered.objects:
        validate_manifest(obj)
    check_promises(rendered, parsed["sets"])


def check_promises(rendered: Rendered, sets: list[tuple[str, str]]) -> None:
    """What a --set in the page says it does, it does."""
    for flag, expression in sets:
        if flag == "--set-json":
            parsed = helm.parse_set_json(expression)
            for name in parsed.get("tiers", {}):
                assert f"name: {name}" in rendered.get("ConfigMap", "escalon-catalogue")["data"]["catalogue.yaml"]
            for label, value in parsed.get("metrics", {}).get("serviceMonitor", {}).get("labels", {}).items():
                assert rendered.get("ServiceMonitor", "escalon")["metadata"]["labels"][label] == value
            continue
        key, value = expression.split("=", 1)
        if m := re.fullmatch(r"tiers\.([-a-z0-9]+)\.autoscaling\.(min|max)Replicas", key):
            (rayservice,) = rendered.kind("RayService")
            groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
            assert groups[m[1]][f"{m[2]}Replicas"] == int(value), expression
            assert f"{m[2]}_replicas: {value}" in rayservice["spec"]["serveConfigV2"]
        elif m := re.fullmatch(r"(router|judge|serving|gateway)\.autoscaling\.(min|max)Replicas", key):
            assert rendered.get("HorizontalPodAutoscaler", f"escalon-{m[1]}")["spec"][f"{m[2]}Replicas"] == int(value)
        elif m := re.fullmatch(r"distill\.workers\.(\w+)\.autoscaling\.maxReplicas", key):
            scaler = rendered.names("ScaledObject") and rendered.get("ScaledObject", f"escalon-worker-{m[1]}")
            assert scaler and scaler["spec"]["maxReplicaCount"] == int(value), expression
        elif key == "image.tag":
            images = {c["image"] for _, t in rendered.pod_templates() for c in t["spec"]["containers"]}
            assert any(i.endswith(f"/escalon:{value}") for i in images), images
        elif key == "telemetry.otlpEndpoint":
            router = rendered.get("Deployment", "escalon-router")["spec"]["template"]["spec"]["containers"][0]
            assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": value} in router["env"]
        elif m := re.fullmatch(r"metrics\.(serviceMonitor|prometheusRule|dashboard)\.enabled", key):
            kind, name = {"serviceMonitor": ("ServiceMonitor", "escalon"), "prometheusRule": ("PrometheusRule", "escalon"),
                          "dashboard": ("ConfigMap", "escalon-dashboard")}[m[1]]
            assert (name in rendered.names(kind)) == (value == "true"), expression
        elif key == "promotion.cluster.enabled":
            assert ("escalon-promote" in rendered.names("Role")) == (value == "true"), expression
        else:
            pytest.fail(f"no check for --set {expression}: add one to check_promises")


def test_the_tier_snippet_adds_a_gpu_tier(chart: ChartRenderer) -> None:
    (snippet,) = [b for b in fenced_blocks("yaml") if b.startswith("tiers:")]
    added = yaml.safe_load(snippet)["tiers"]
    rendered = chart.render(deep_merge(load_values(VALUES_DIR / "values-prod.yaml"), {"tiers": added}))
    (rayservice,) = rendered.kind("RayService")
    groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for name, tier in added.items():
        limits = groups[name]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == tier["resources"]["gpus"]
        assert f"escalon-tier-{name}" in rendered.names("PodDisruptionBudget")


# ---- kubectl commands name real objects ----------------------------------------------------------

KINDS = {
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "svc": "Service", "service": "Service",
    "statefulset": "StatefulSet", "sts": "StatefulSet",
    "hpa": "HorizontalPodAutoscaler",
    "rayservice": "RayService",
    "scaledobject": "ScaledObject",
    "pdb": "PodDisruptionBudget",
    "configmap": "ConfigMap", "cm": "ConfigMap",
    "networkpolicy": "NetworkPolicy", "netpol": "NetworkPolicy",
    "servicemonitor": "ServiceMonitor", "podmonitor": "PodMonitor", "prometheusrule": "PrometheusRule",
}


@pytest.fixture(scope="module")
def universe(dev: Rendered, prod: Rendered) -> dict[str, Any]:
    """Every object the page may name: both environments, what KubeRay derives, the page's own."""
    objects = dev.objects + prod.objects + [m for body in HEREDOCS for m in yaml.safe_load_all(body) if m]
    names = {(o["kind"], o["metadata"].get("name")) for o in objects}
    for rayservice in dev.kind("RayService") + prod.kind("RayService"):
        # KubeRay creates these Services for a RayService and keeps them across cluster upgrades.
        names |= {("Service", f"{rayservice['metadata']['name']}-{suffix}") for suffix in ("head-svc", "serve-svc")}
    pod_labels = [t["metadata"]["labels"] for r in (dev, prod) for _, t in r.pod_templates()]
    pod_labels += [m["spec"]["template"]["metadata"]["labels"] for body in HEREDOCS for m in yaml.safe_load_all(body)]
    return {"names": names, "pod_labels": pod_labels}


def referenced_objects(command: str) -> list[tuple[str, str]]:
    tokens = [t for t in shlex.split(command.split("|")[0]) if "<" not in t]
    refs = []
    for i, token in enumerate(tokens):
        if "/" in token and token.split("/", 1)[0] in KINDS and not token.startswith(("http", "-")):
            kind, name = token.split("/", 1)
            refs.append((KINDS[kind], name))
        elif token in KINDS and i > 0 and tokens[i - 1] in ("get", "describe") and i + 1 < len(tokens):
            following = tokens[i + 1]
            if not following.startswith("-") and "," not in token:
                refs.append((KINDS[token], following))
    return refs


@pytest.mark.parametrize("command", KUBECTL_COMMANDS, ids=lambda c: c[:100])
def test_kubectl_command_names_objects_the_chart_creates(command: str, universe: dict[str, Any]) -> None:
    tokens = shlex.split(command.split("|")[0])
    if "-n" in tokens:
        assert tokens[tokens.index("-n") + 1] in (NAMESPACE, "kuberay-system"), command
    for ref in referenced_objects(command):
        assert ref in universe["names"], f"{command!r} names {ref[0]}/{ref[1]}, which nothing creates"
    if "-l" in tokens and "nodes" not in tokens:
        selector = dict(pair.split("=", 1) for pair in tokens[tokens.index("-l") + 1].split(","))
        assert any(selector.items() <= labels.items() for labels in universe["pod_labels"]), (
            f"{command!r}: no pod carries {selector}"
        )


def test_reference_check_catches_a_wrong_name(universe: dict[str, Any]) -> None:
    refs = referenced_objects("kubectl -n escalon rollout status deployment/escalon-routr")
    assert refs == [("Deployment", "escalon-routr")] and refs[0] not in universe["names"]


# ---- manifests and dry runs ----------------------------------------------------------------------


@pytest.mark.parametrize("body", HEREDOCS)
def test_manifests_in_the_page_are_valid(body: str) -> None:
    prod = load_values(VALUES_DIR / "values-prod.yaml")
    for manifest in (m for m in yaml.safe_load_all(body) if m):
        validate_manifest(manifest)
        pod = manifest["spec"]["template"]
        # The release's NetworkPolicy admits only pods of the release to the distill front.
        assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["image"].startswith(prod["image"]["repository"] + ":")


def test_files_the_page_names_in_the_image_are_shipped() -> None:
    """Paths under the image's site-packages (the Dockerfile installs into /usr/local) exist in the package."""
    site = "/usr/local/lib/python3.11/site-packages/escalon/"
    paths = set(re.findall(re.escape(site) + r"([\w./-]+)", DOC.read_text()))
    assert paths, "the page names no packaged file"
    for relative in paths:
        assert (ROOT / "shared" / "escalon" / relative).is_file(), relative


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("command", DRY_RUNS, ids=lambda c: c.split("|")[0][:100])
def test_dry_run_commands_run(command: str, tmp_path: Path) -> None:
    first = command.split("|")[0]
    env = os.environ | {
        # No cluster, no kubeconfig: a client-side dry run must not need either.
        "KUBECONFIG": str(tmp_path / "none"),
        "OPENAI_API_KEY": "test",
        "ESCALON_GATEWAY_API_KEYS": "key-1,key-2",
        "ESCALON_BROKER_URL": "amqps://u:p@broker:5671//",
        "ESCALON_DATABASE_URL": "postgresql+psycopg://u:p@db/escalon",
        "ESCALON_RESULT_BACKEND_URL": "db+postgresql+psycopg://u:p@db/escalon",
    }
    result = subprocess.run(["bash", "-c", first], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    validate_manifest(manifest)
    if manifest["kind"] == "Secret":
        # The names the values files point at, with the keys they read.
        prod = load_values(VALUES_DIR / "values-prod.yaml")
        wanted = {
            "escalon-provider-keys": {t["apiKeyEnv"] for t in prod["tiers"].values() if t.get("apiKeyEnv")},
            prod["gateway"]["apiKeys"]["existingSecret"]: {"api-keys"},
            "escalon-broker": {prod["distill"]["broker"]["existingSecretKey"]},
            "escalon-database": {prod["distill"]["database"]["existingSecretKey"],
                                 prod["distill"]["resultBackend"]["existingSecretKey"]},
        }[manifest["metadata"]["name"]]
        assert wanted <= set(manifest["data"]), (wanted, manifest["data"].keys())

