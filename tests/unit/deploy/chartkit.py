"""Render the escalon chart with the real Helm engine and validate what it renders.

`ChartRenderer` renders values (files + overrides) into parsed manifests (`Rendered`);
`validate_manifest` checks one object against the Kubernetes schemas (kubernetes-validate, strict)
or, for KubeRay, KEDA and Prometheus Operator objects, against the CRD schemas kept in schemas/.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = ROOT / "charts" / "escalon"
VALUES_DIR = ROOT / "deploy" / "helm"
SCHEMA_DIR = Path(__file__).with_name("schemas")
RELEASE, NAMESPACE = "escalon", "escalon"
# The newest Kubernetes minor the schemas cover; the chart's kubeVersion floor is 1.29.
KUBERNETES_VERSION = "1.37"
CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): "rayservice-ray.io-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    # minimal schemas written for these tests (schemas/README.md), not the upstream CRDs
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing for user values: maps merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_values(*files: str | Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        values = deep_merge(values, yaml.safe_load(Path(path).read_text()) or {})
    return values


class Rendered:
    """The objects one render produced, with lookups by kind and name."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.notes = next((text for name, text in files.items() if name.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = [
            doc
            for name, text in sorted(files.items())
            if name.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.kind(kind) if o["metadata"]["name"] == name]
        assert found, f"no {kind}/{name}; rendered {kind}s: {[o['metadata']['name'] for o in self.kind(kind)]}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.kind(kind)}

    def pod_templates(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every pod this release can start, named by owner: workloads and the RayService's groups."""
        for obj in self.objects:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
                yield name, obj["spec"]["template"]
            elif obj["kind"] == "RayService":
                cluster = obj["spec"]["rayClusterConfig"]
                yield f"{name}/head", cluster["headGroupSpec"]["template"]
                for group in cluster.get("workerGroupSpecs", []):
                    yield f"{name}/{group['groupName']}", group["template"]


class ChartRenderer:
    """Renders the chart at CHART_DIR as release RELEASE."""

    def values(self, *files: str | Path, **overrides: Any) -> dict[str, Any]:
        return deep_merge(load_values(*files), overrides)

    def render(self, values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> Rendered:
        # A fresh load per render (about 2 ms): Helm drops the subcharts a render disables from
        # the loaded chart itself, so a shared one would lose the bundled Redis for good.
        with helm.Chart.load(CHART_DIR) as chart:
            return Rendered(chart.render(values=values or {}, name=RELEASE, namespace=namespace))

    def merged_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values a release would use: chart defaults coalesced with these."""
        with helm.Chart.load(CHART_DIR) as chart:
            return chart.merge_values(values)

    def render_files(self, *files: str | Path, **overrides: Any) -> Rendered:
        return self.render(self.values(*files, **overrides))


def values_files() -> list[Path]:
    return sorted(VALUES_DIR.glob("values-*.yaml"))


# ---- validation --------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD schema as a strict API server reads it: unknown fields are errors, not pruned."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validator(filename: str) -> jsonschema.Draft7Validator:
    schema = _strict(json.loads((SCHEMA_DIR / filename).read_text()))
    # The API server checks metadata itself; the CRD schema only says "object".
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


# kubernetes-validate reads its schema files (megabytes of JSON) again for every object; keep
# each one in memory after its first read so a whole chart validates in a few milliseconds.
kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)


_VALID: set[str] = set()  # objects already found valid: renders repeat most of their objects


def validate_manifest(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming the object and the first offending path."""
    key = json.dumps(obj, sort_keys=True)
    if key in _VALID:
        return
    _check(obj)
    _VALID.add(key)


def _check(obj: dict[str, Any]) -> None:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    crd = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd:
        errors = sorted(_crd_validator(crd).iter_errors(obj), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: {'.'.join(map(str, errors[0].absolute_path))}: {errors[0].message}"
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise AssertionError(f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')}") from None
