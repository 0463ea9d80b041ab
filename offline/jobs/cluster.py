"""Promotion in a Kubernetes cluster: the promoted student's rung applied to the catalogue ConfigMap and the tiers'
RayService through the Kubernetes API (the `kubernetes` Python client), with server-side apply.

What is applied, both under the field manager `escalon-promote` (so Helm's fields and ours stay apart):

  ConfigMap  <release>-catalogue, key `catalogue.promoted.yaml`: every rung promoted so far (the `rungs:` format of
             escalon.registry's overlay), this one added or replaced by name. The key sits beside the chart's
             `catalogue.yaml` in the folder every pod mounts (/etc/escalon); routers and serving fronts started
             with ESCALON_PROMOTED_CATALOGUE pointing at it re-read it when the kubelet swaps the mounted file
             (escalon.registry.LiveCatalogue: one stat() per request), so they route to the new rung without a
             restart.
  RayService spec.serveConfigV2 gains one Serve application named after the rung (the same import path as the
             chart's tiers, its catalogue the mounted overlay), with the base rung's deployment settings
             (replicas, CPUs, GPUs and the tier's custom resource, so it lands on the base tier's worker group).
             KubeRay redeploys the changed Serve config in place, without a new Ray cluster.

A dry run (`dry_run=True`) sends the same applies with `dryRun=All`: the API server validates and answers with the
object as it would be, nothing is stored, and the unified diff of the changed fields is returned (and printed by
the job). Where to reach the API server: in a pod, the service account's token (`load_incluster_config`);
otherwise the kubeconfig named by ESCALON_PROMOTE_KUBECONFIG. The chart gives the distill workers a service account
whose Role allows only get and patch on those two objects (charts/escalon/templates/rbac.yaml).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from escalon.errors import ConfigError
from escalon.registry import PROMOTED_FILE, Rung

FIELD_MANAGER = "escalon-promote"
APPLY = "application/apply-patch+yaml"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RAY = ("ray.io", "v1", "rayservices")


class ClusterSettings(BaseSettings):
    """Where promotion applies a winner besides the local overlay (the chart sets these on the distill workers)."""

    model_config = SettingsConfigDict(env_prefix="ESCALON_PROMOTE_", extra="ignore")

    cluster: Literal["auto", "on", "off"] = Field(
        default="auto", description="auto: apply in the cluster when running in a pod or given a kubeconfig")
    kubeconfig: Path | None = Field(default=None, description="kubeconfig file (outside a pod)")
    context: str = Field(default="", description="kubeconfig context (default: its current one)")
    namespace: str = Field(default="", description="default: the pod's namespace, or the context's")
    configmap: str = Field(default="", description="the rung catalogue ConfigMap (<release>-catalogue)")
    rayservice: str = Field(default="", description="the tiers' RayService; empty: none patched")
    overlay_key: str = Field(default=PROMOTED_FILE, description="the ConfigMap key holding the promoted rungs")
    mount_dir: Path = Field(default=Path("/etc/escalon"), description="where pods mount the ConfigMap")

    def wanted(self) -> bool:
        if self.cluster != "auto":
            return self.cluster == "on"
        return bool(self.kubeconfig) or (bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
                                         and (SERVICE_ACCOUNT_DIR / "token").is_file())


def api_client(settings: ClusterSettings):  # noqa: ANN201 - kubernetes.client.ApiClient
    """An API client: the kubeconfig when one is named, else the pod's service account."""
    from kubernetes import client, config

    try:
        if settings.kubeconfig:
            return config.new_client_from_config(config_file=str(settings.kubeconfig), context=settings.context or None)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException as exc:
        raise ConfigError(f"cannot reach the Kubernetes API: {exc}; set ESCALON_PROMOTE_KUBECONFIG outside a pod, "
                          "or ESCALON_PROMOTE_CLUSTER=off to promote locally only") from None


def namespace_of(settings: ClusterSettings) -> str:
    if settings.namespace:
        return settings.namespace
    if (SERVICE_ACCOUNT_DIR / "namespace").is_file():
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
    if settings.kubeconfig:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=str(settings.kubeconfig))
        return active.get("context", {}).get("namespace") or "default"
    return "default"


def merged_overlay(current: str | None, rung: Rung) -> str:
    """The overlay text with `rung` added, or replacing the rung of the same name."""
    rungs = [r for r in ((yaml.safe_load(current or "") or {}).get("rungs") or []) if r.get("name") != rung.name]
    rungs.append(rung.model_dump(mode="json", exclude_none=True))
    return yaml.safe_dump({"rungs": rungs}, sort_keys=False)


def serve_application(serve_config: str, rung: Rung, base: str, catalogue: str) -> str:
    """serveConfigV2 with one application for `rung`, its deployment settings copied from the `base` rung's."""
    config = yaml.safe_load(serve_config or "") or {}
    apps = config.setdefault("applications", [])
    base_app = next((a for a in apps if a.get("name") == base), None)
    if base_app is None:
        raise ConfigError(f"the RayService serves no application {base!r} (the student's base rung) to copy "
                          f"replicas and resources from; it serves {[a.get('name') for a in apps]}")
    deployment = copy.deepcopy((base_app.get("deployments") or [{}])[0])
    deployment["name"] = rung.name
    spec = yaml.safe_dump(rung.model_dump(mode="json", exclude_none=True), sort_keys=True)
    app = {"name": rung.name, "route_prefix": f"/{rung.name}", "import_path": base_app.get("import_path",
                                                                                           "escalon.serving.app:build_app"),
           "args": {"rung": rung.name, "catalogue": catalogue},
           "runtime_env": {"env_vars": {"ESCALON_RUNG_CHECKSUM": hashlib.sha256(spec.encode()).hexdigest()[:16]}},
           "deployments": [deployment]}
    config["applications"] = [a for a in apps if a.get("name") != rung.name] + [app]
    return yaml.safe_dump(config, sort_keys=False)


def _diff(label: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"{label} (live)", tofile=f"{label} (applied)"))


def apply_promotion(rung: Rung, base: str, settings: ClusterSettings, *, dry_run: bool = False,
                    api=None) -> dict[str, Any]:  # noqa: ANN001 - an ApiClient, for tests
    """Server-side apply of `rung` to the ConfigMap (and the RayService, when one is named). Returns what was
    applied, to which objects, and the diff; ConfigError names the object and the API server's answer."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    if not settings.configmap:
        raise ConfigError("ESCALON_PROMOTE_CONFIGMAP is not set: name the rung catalogue ConfigMap "
                          "(the chart's <release>-catalogue)")
    api = api or api_client(settings)
    ns = namespace_of(settings)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    opts: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
    if dry_run:
        opts["dry_run"] = "All"
    key = settings.overlay_key
    diffs, objects = [], []
    try:
        live = core.read_namespaced_config_map(settings.configmap, ns)
        before = (live.data or {}).get(key, "")
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": settings.configmap, "namespace": ns},
                "data": {key: merged_overlay(before, rung)}}
        answer = core.patch_namespaced_config_map(settings.configmap, ns, body, **opts)
        diffs.append(_diff(f"configmap/{settings.configmap} data.{key}", before, (answer.data or {}).get(key, "")))
        objects.append(f"configmap/{settings.configmap}")
        if settings.rayservice:
            group, version, plural = RAY
            live_rs = custom.get_namespaced_custom_object(group, version, ns, plural, settings.rayservice)
            before = (live_rs.get("spec") or {}).get("serveConfigV2", "")
            after = serve_application(before, rung, base, str(settings.mount_dir / key))
            body = {"apiVersion": f"{group}/{version}", "kind": "RayService",
                    "metadata": {"name": settings.rayservice, "namespace": ns}, "spec": {"serveConfigV2": after}}
            answer = custom.patch_namespaced_custom_object(group, version, ns, plural, settings.rayservice, body, **opts)
            diffs.append(_diff(f"rayservice/{settings.rayservice} spec.serveConfigV2", before,
                               (answer.get("spec") or {}).get("serveConfigV2", "")))
            objects.append(f"rayservice/{settings.rayservice}")
    except ApiException as exc:
        raise ConfigError(f"the Kubernetes API refused promotion of {rung.name!r} in namespace {ns!r}: {exc.status} "
                          f"{exc.reason}: {(exc.body or '')[:300]} — check the distill workers' Role "
                          "(promotion.cluster in the chart) and the object names") from None
    return {"namespace": ns, "dry_run": dry_run, "objects": objects, "field_manager": FIELD_MANAGER,
            "diff": "".join(diffs)}
