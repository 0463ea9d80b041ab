"""What the chart renders: per-tier objects and scaling bounds, probes, security, rollouts, policies."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from chartkit import VALUES_DIR, ChartRenderer, Rendered, load_values

pytestmark = pytest.mark.unit

GRPC_SERVICES = {"router": 50051, "judge": 50052, "serving": 50053, "distill": 50054}
SERVICES = [*GRPC_SERVICES, "gateway"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (only,) = obj["spec"]["template"]["spec"]["containers"]
    return only


def serve_apps(rendered: Rendered) -> dict[str, dict[str, Any]]:
    (rayservice,) = rendered.kind("RayService")
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return {app["name"]: app for app in config["applications"]}


def worker_groups(rendered: Rendered) -> dict[str, dict[str, Any]]:
    (rayservice,) = rendered.kind("RayService")
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


# ---- model tiers ---------------------------------------------------------------------------------


def test_dev_runs_the_small_cpu_models_one_replica_each(dev: Rendered) -> None:
    apps, groups = serve_apps(dev), worker_groups(dev)
    assert set(apps) == set(groups) == {"smollm2-135m", "gemma3-270m"}
    for name, app in apps.items():
        (deployment,) = app["deployments"]
        assert deployment["name"] == name
        assert deployment["autoscaling_config"]["min_replicas"] == deployment["autoscaling_config"]["max_replicas"] == 1
        assert deployment["ray_actor_options"]["num_gpus"] == 0
        group = groups[name]
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"] == 1
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits
    assert not dev.kind("ScaledObject") and not dev.kind("HorizontalPodAutoscaler")


def test_prod_gpu_tiers_get_gpus_node_pools_and_their_scaling_bounds(prod: Rendered) -> None:
    values = load_values(VALUES_DIR / "values-prod.yaml")["tiers"]
    apps, groups = serve_apps(prod), worker_groups(prod)
    assert set(apps) == set(groups) == {"qwen25-7b", "qwen25-32b"}, "remote rungs must not get a workload"
    for name in apps:
        tier = values[name]
        scaling = apps[name]["deployments"][0]["autoscaling_config"]
        assert scaling == {
            "min_replicas": tier["autoscaling"]["minReplicas"],
            "max_replicas": tier["autoscaling"]["maxReplicas"],
            "target_ongoing_requests": tier["autoscaling"]["targetOngoingRequests"],
        }
        group = groups[name]
        # One replica per worker pod: the group's pod bounds are the tier's replica bounds.
        assert (group["minReplicas"], group["maxReplicas"]) == (scaling["min_replicas"], scaling["max_replicas"])
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == tier["resources"]["gpus"]
        assert pod["nodeSelector"] == tier["nodeSelector"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        # Replicas ask for the custom resource only their own group's pods advertise.
        actor = apps[name]["deployments"][0]["ray_actor_options"]
        assert actor["num_gpus"] == tier["resources"]["gpus"]
        assert actor["resources"] == {f"escalon-tier-{name}": 1}
        assert group["resources"] == {f"escalon-tier-{name}": "1"}
    (rayservice,) = prod.kind("RayService")
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_each_local_tier_has_a_disruption_budget_over_its_own_pods(prod: Rendered) -> None:
    for name, group in worker_groups(prod).items():
        pdb = prod.get("PodDisruptionBudget", f"escalon-tier-{name}")
        assert pdb["spec"]["maxUnavailable"] == 1
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selector.items() <= group["template"]["metadata"]["labels"].items()
        assert selector["escalon.dev/tier"] == name


def test_adding_a_tier_is_a_values_edit(chart: ChartRenderer) -> None:
    values = load_values(VALUES_DIR / "values-dev.yaml")
    values["tiers"]["tiny-extra"] = {
        "family": "smollm",
        "backend": "local-gguf",
        "model": "smollm2-135m-instruct",
        "price": {"inputPer1M": 0.01, "outputPer1M": 0.01},
        "contextLimit": 2048,
        "accelerator": "cpu",
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetOngoingRequests": 1},
        "resources": {"cpus": 0.5, "memory": "1Gi"},
    }
    rendered = chart.render(values)
    assert worker_groups(rendered)["tiny-extra"]["maxReplicas"] == 3
    assert serve_apps(rendered)["tiny-extra"]["deployments"][0]["autoscaling_config"]["min_replicas"] == 0
    assert "escalon-tier-tiny-extra" in rendered.names("PodDisruptionBudget")
    assert "name: tiny-extra" in rendered.get("ConfigMap", "escalon-catalogue")["data"]["catalogue.yaml"]


def test_a_disabled_tier_leaves_no_trace(chart: ChartRenderer) -> None:
    rendered = chart.render_files(VALUES_DIR / "values-dev.yaml", tiers={"gemma3-270m": {"enabled": False}})
    assert set(serve_apps(rendered)) == {"smollm2-135m"}
    assert "gemma3-270m" not in rendered.get("ConfigMap", "escalon-catalogue")["data"]["catalogue.yaml"]
    assert "escalon-tier-gemma3-270m" not in rendered.names("PodDisruptionBudget")


def test_remote_tiers_get_keys_from_the_secret_not_values(prod: Rendered) -> None:
    for deployment in ("escalon-serving", "escalon-worker-cpu"):
        env = env_of(container(prod.get("Deployment", deployment)))
        assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "escalon-provider-keys", "key": "OPENAI_API_KEY"}}
    # Router and judge never see provider keys.
    assert "OPENAI_API_KEY" not in env_of(container(prod.get("Deployment", "escalon-router")))
    assert not prod.kind("Secret"), "production takes every secret from outside the chart"


def test_serving_attaches_to_the_rayservice(dev: Rendered, chart: ChartRenderer) -> None:
    env = env_of(container(dev.get("Deployment", "escalon-serving")))
    assert env["ESCALON_SERVING_RAY_ADDRESS"] == "ray://escalon-tiers-head-svc:10001"
    assert env["ESCALON_SERVING_DEPLOY"] == "false"
    remote_only = chart.render(
        {
            "tiers": {
                "smollm2-135m": {"enabled": False},
                "gemma3-270m": {"enabled": False},
                "echo": {"family": "f", "backend": "openai", "model": "m", "baseUrl": "http://echo:8000/v1",
                         "price": {"inputPer1M": 0, "outputPer1M": 0}, "contextLimit": 1000},
            }
        }
    )
    assert not remote_only.kind("RayService")
    assert "ESCALON_SERVING_RAY_ADDRESS" not in env_of(container(remote_only.get("Deployment", "escalon-serving")))


# ---- services: probes, autoscaling, disruption budgets -------------------------------------------


@pytest.mark.parametrize("service", list(GRPC_SERVICES))
def test_grpc_services_use_native_grpc_probes(dev: Rendered, service: str) -> None:
    port = GRPC_SERVICES[service]
    c = container(dev.get("Deployment", f"escalon-{service}"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": port}, probe
    env = env_of(c)
    assert env[f"ESCALON_{service.upper()}_PORT"] == str(port)
    assert env[f"ESCALON_{service.upper()}_HOST"] == "0.0.0.0"
    service_obj = dev.get("Service", f"escalon-{service}")
    assert service_obj["spec"]["ports"][0] == {"name": "grpc", "port": port, "targetPort": "grpc", "appProtocol": "grpc"}
    assert [p["name"] for p in service_obj["spec"]["ports"]] == ["grpc", "metrics"]  # test_chart_monitoring.py


def test_startup_probes_allow_for_model_load(dev: Rendered) -> None:
    def budget(name: str) -> int:
        probe = container(dev.get("Deployment", f"escalon-{name}"))["startupProbe"]
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert budget("router") >= 60
    # The serving front reports SERVING only once the tiers' Serve apps answer.
    assert budget("serving") >= 300 > budget("router")


def test_gateway_uses_http_probes(dev: Rendered, prod: Rendered) -> None:
    c = container(dev.get("Deployment", "escalon-gateway"))
    # Ready once the router answers (/healthz); alive while the process answers (/livez), so a
    # router outage takes gateways out of rotation without restarting them.
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9464}]
    env = env_of(c)
    assert env["ESCALON_GATEWAY_HOST"] == "0.0.0.0" and env["ESCALON_GATEWAY_PORT"] == "8080"
    assert env["ESCALON_GATEWAY_ROUTER_ADDRESS"] == "escalon-router:50051"
    assert env["ESCALON_GATEWAY_SERVING_ADDRESS"] == "escalon-serving:50053"
    assert env["ESCALON_GATEWAY_DISTILL_ADDRESS"] == "escalon-distill:50054"
    assert "ESCALON_GATEWAY_API_KEYS" not in env
    keys = env_of(container(prod.get("Deployment", "escalon-gateway")))["ESCALON_GATEWAY_API_KEYS"]
    assert keys == {"secretKeyRef": {"name": "escalon-gateway-keys", "key": "api-keys"}}


def test_service_addresses_point_at_the_services(dev: Rendered) -> None:
    router = env_of(container(dev.get("Deployment", "escalon-router")))
    assert router["ESCALON_ROUTER_SERVING_ADDRESS"] == "escalon-serving:50053"
    assert router["ESCALON_ROUTER_JUDGE_ADDRESS"] == "escalon-judge:50052"
    judge = env_of(container(dev.get("Deployment", "escalon-judge")))
    assert judge["ESCALON_JUDGE_SERVING_ADDRESS"] == "escalon-serving:50053"


def test_grpc_services_get_their_in_flight_bound(dev: Rendered, chart: ChartRenderer) -> None:
    for name in ("router", "judge", "serving", "distill", "gateway"):
        env = env_of(container(dev.get("Deployment", f"escalon-{name}")))
        assert env[f"ESCALON_{name.upper()}_MAX_IN_FLIGHT"] == "256"
    tuned = chart.render_files(VALUES_DIR / "values-dev.yaml", router={"maxInFlight": 200})
    assert env_of(container(tuned.get("Deployment", "escalon-router")))["ESCALON_ROUTER_MAX_IN_FLIGHT"] == "200"


@pytest.mark.parametrize("service", ["router", "judge"])
def test_router_and_judge_scale_on_cpu(prod: Rendered, service: str) -> None:
    expected = load_values(VALUES_DIR / "values-prod.yaml")[service]["autoscaling"]
    hpa = prod.get("HorizontalPodAutoscaler", f"escalon-{service}")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"escalon-{service}"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (expected["minReplicas"], expected["maxReplicas"])
    assert hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == expected["targetCPUUtilizationPercentage"]
    # The HPA owns the replica count: the Deployment must not fight it.
    assert "replicas" not in prod.get("Deployment", f"escalon-{service}")["spec"]
    pdb = prod.get("PodDisruptionBudget", f"escalon-{service}")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == service


def test_autoscaling_off_means_fixed_replicas_and_no_autoscalers(dev: Rendered) -> None:
    for name in SERVICES:
        assert dev.get("Deployment", f"escalon-{name}")["spec"]["replicas"] == 1
    assert dev.get("Deployment", "escalon-worker-cpu")["spec"]["replicas"] == 1
    assert not dev.kind("HorizontalPodAutoscaler") and not dev.kind("ScaledObject")


def test_gateway_ingress_is_optional(dev: Rendered, chart: ChartRenderer) -> None:
    assert not dev.kind("Ingress")
    rendered = chart.render_files(VALUES_DIR / "values-dev.yaml", gateway={"ingress": {"enabled": True, "host": "x.test"}})
    rule = rendered.get("Ingress", "escalon-gateway")["spec"]["rules"][0]
    assert rule["host"] == "x.test"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "escalon-gateway", "port": {"name": "http"}}


# ---- distill workers -----------------------------------------------------------------------------


def test_workers_scale_on_queue_depth_with_an_external_metric_hpa_by_default(chart: ChartRenderer) -> None:
    rendered = chart.render({"distill": {"workers": {"gpu": {"enabled": True}}}})
    for queue in ("cpu", "gpu"):
        worker = rendered.get("Deployment", f"escalon-worker-{queue}")
        assert container(worker)["args"] == ["-m", "escalon.distill", "worker", "--queues", queue]
        hpa = rendered.get("HorizontalPodAutoscaler", f"escalon-worker-{queue}")["spec"]
        (metric,) = hpa["metrics"]
        assert metric["type"] == "External", "workers scale on queue depth, never on CPU"
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"queue": queue}
    gpu = container(rendered.get("Deployment", "escalon-worker-gpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container(rendered.get("Deployment", "escalon-worker-cpu"))["resources"].get("limits", {})
    assert not rendered.kind("ScaledObject")


def test_keda_replaces_the_hpas_and_can_scale_to_zero(prod: Rendered) -> None:
    assert not {"escalon-worker-cpu", "escalon-worker-gpu"} & prod.names("HorizontalPodAutoscaler")
    gpu = prod.get("ScaledObject", "escalon-worker-gpu")["spec"]
    assert gpu["scaleTargetRef"] == {"name": "escalon-worker-gpu"}
    assert (gpu["minReplicaCount"], gpu["maxReplicaCount"]) == (0, 4)
    (trigger,) = gpu["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "gpu" and trigger["metadata"]["mode"] == "QueueLength"
    # KEDA reads the broker URL from the worker's environment, which takes it from the Secret.
    broker = env_of(container(prod.get("Deployment", "escalon-worker-gpu")))[trigger["metadata"]["hostFromEnv"]]
    assert broker == {"secretKeyRef": {"name": "escalon-broker", "key": "url"}}


def test_keda_with_the_bundled_redis_reads_celery_lists(chart: ChartRenderer) -> None:
    rendered = chart.render({"distill": {"keda": {"enabled": True}}})
    (trigger,) = rendered.get("ScaledObject", "escalon-worker-cpu")["spec"]["triggers"]
    assert trigger == {"type": "redis", "metadata": {"address": "escalon-redis:6379", "listName": "cpu", "listLength": "5"}}


def test_bundled_broker_and_database_are_wired_in(dev: Rendered) -> None:
    for name in ("escalon-distill", "escalon-worker-cpu"):
        env = env_of(container(dev.get("Deployment", name)))
        assert env["ESCALON_DISTILL_BROKER_URL"] == "redis://escalon-redis:6379/0"
        assert env["ESCALON_DISTILL_RESULT_BACKEND"] == "redis://escalon-redis:6379/1"
        assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "escalon-postgresql", "key": "password"}}
        assert env["ESCALON_DISTILL_DATABASE_URL"] == (
            "postgresql+psycopg://escalon:$(PGPASSWORD)@escalon-postgresql:5432/escalon"
        )
    assert {"escalon-redis", "escalon-postgresql"} <= dev.names("StatefulSet") & dev.names("Service")


def test_external_broker_and_database_come_from_secrets(prod: Rendered) -> None:
    env = env_of(container(prod.get("Deployment", "escalon-distill")))
    assert env["ESCALON_DISTILL_DATABASE_URL"] == {"secretKeyRef": {"name": "escalon-database", "key": "url"}}
    assert env["ESCALON_DISTILL_RESULT_BACKEND"] == {
        "secretKeyRef": {"name": "escalon-database", "key": "result-backend-url"}
    }
    assert "PGPASSWORD" not in env
    assert not {"escalon-redis", "escalon-postgresql"} & prod.names("StatefulSet")


def test_distill_front_and_workers_share_one_data_volume(prod: Rendered) -> None:
    claims = set()
    for name in ("escalon-distill", "escalon-worker-cpu", "escalon-worker-gpu"):
        volumes = {v["name"]: v for v in prod.get("Deployment", name)["spec"]["template"]["spec"]["volumes"]}
        claims.add(volumes["data"]["persistentVolumeClaim"]["claimName"])
    assert claims == {"escalon-distill-data"}
    pvc = prod.get("PersistentVolumeClaim", "escalon-distill-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Everything else keeps its scratch data to itself.
    router = {v["name"]: v for v in prod.get("Deployment", "escalon-router")["spec"]["template"]["spec"]["volumes"]}
    assert router["data"] == {"name": "data", "emptyDir": {}}


# ---- security and graceful stop ------------------------------------------------------------------


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_every_pod_is_non_root_read_only_and_unprivileged(environment: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(environment)
    pods = dict(rendered.pod_templates())
    assert len(pods) >= 7
    for owner, template in pods.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["runAsUser"] > 0, owner
        # Only the Ray head holds an API token: its autoscaler sidecar scales the worker groups.
        assert spec["automountServiceAccountToken"] is owner.endswith("/head"), owner
        for c in spec["containers"]:
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (owner, c["name"])
            assert security["allowPrivilegeEscalation"] is False, (owner, c["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (owner, c["name"])
            # A read-only root needs somewhere to write.
            if c["image"].startswith("escalon"):
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/tmp", "/var/lib/escalon", "/etc/escalon"} <= mounts, (owner, c["name"])
    # The Ray autoscaler sidecar KubeRay injects gets the same container settings.
    if rendered.kind("RayService"):
        options = rendered.kind("RayService")[0]["spec"]["rayClusterConfig"]["autoscalerOptions"]
        assert options["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_kubernetes_waits_longer_than_the_services_drain(environment: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(environment)
    checked = 0
    for owner, template in rendered.pod_templates():
        for c in template["spec"]["containers"]:
            grace = env_of(c).get("ESCALON_GRACE_SECONDS")
            if grace is not None:
                assert template["spec"]["terminationGracePeriodSeconds"] > float(grace), owner
                checked += 1
    assert checked >= 7


def test_pods_run_as_the_release_accounts(dev: Rendered) -> None:
    accounts = {a["metadata"]["name"]: a for a in dev.kind("ServiceAccount")}
    assert set(accounts) == {"escalon", "escalon-ray-head"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts.values())
    for owner, template in dev.pod_templates():
        if template["spec"]["containers"][0]["image"].startswith("escalon"):
            # KubeRay binds the autoscaler's Role to the head's account: keep it the head's alone.
            expected = "escalon-ray-head" if owner.endswith("/head") else "escalon"
            assert template["spec"]["serviceAccountName"] == expected, owner


# ---- catalogue and rollouts ----------------------------------------------------------------------


def checksums(rendered: Rendered) -> dict[str, str]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/catalogue"]
        for d in rendered.kind("Deployment")
    }


def test_catalogue_change_rolls_every_pod_that_reads_it(chart: ChartRenderer, dev: Rendered) -> None:
    before = checksums(dev)
    assert set(before) == {f"escalon-{s}" for s in SERVICES} | {"escalon-worker-cpu"}
    assert len(set(before.values())) == 1
    repriced = chart.render_files(
        VALUES_DIR / "values-dev.yaml", tiers={"smollm2-135m": {"price": {"inputPer1M": 0.5, "outputPer1M": 0.5}}}
    )
    after = checksums(repriced)
    assert all(after[name] != before[name] for name in before), "a catalogue change must roll the pods"
    assert "input_per_1m: 0.5" in repriced.get("ConfigMap", "escalon-catalogue")["data"]["catalogue.yaml"]
    # Only the edited tier's Serve app is redeployed.
    def rung_sums(rendered: Rendered) -> dict[str, str]:
        return {n: a["runtime_env"]["env_vars"]["ESCALON_RUNG_CHECKSUM"] for n, a in serve_apps(rendered).items()}

    old, new = rung_sums(dev), rung_sums(repriced)
    assert old["smollm2-135m"] != new["smollm2-135m"] and old["gemma3-270m"] == new["gemma3-270m"]


def test_unrelated_change_does_not_roll_pods(chart: ChartRenderer, dev: Rendered) -> None:
    rescaled = chart.render_files(VALUES_DIR / "values-dev.yaml", router={"replicas": 3})
    assert checksums(rescaled) == checksums(dev)


def test_catalogue_configmap_is_mounted_where_services_read_it(dev: Rendered) -> None:
    c = container(dev.get("Deployment", "escalon-router"))
    assert env_of(c)["ESCALON_CATALOGUE"] == "/etc/escalon/catalogue.yaml"
    volumes = {v["name"]: v for v in dev.get("Deployment", "escalon-router")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["catalogue"]["configMap"]["name"] == "escalon-catalogue"
    assert {"name": "catalogue", "mountPath": "/etc/escalon", "readOnly": True} in c["volumeMounts"]


def test_telemetry_endpoint_is_configurable(chart: ChartRenderer, dev: Rendered) -> None:
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_of(container(dev.get("Deployment", "escalon-router")))
    rendered = chart.render_files(VALUES_DIR / "values-dev.yaml", telemetry={"otlpEndpoint": "http://otel:4317"})
    for owner, template in rendered.pod_templates():
        for c in template["spec"]["containers"]:
            if c["image"].startswith("escalon"):
                env = env_of(c)
                assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317", owner
                assert env["OTEL_SERVICE_NAME"].startswith("escalon-"), owner


# ---- network policies ----------------------------------------------------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and labels.get(expr["key"]) in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
    return True


def admits(policies: list[dict[str, Any]], pod: dict[str, str], port: int, source_ns: str, source: dict[str, str]) -> bool:
    """NetworkPolicy semantics for ingress from a pod in another namespace (or the same one)."""
    selecting = [p for p in policies if _matches(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True  # not isolated
    ns_labels = {"kubernetes.io/metadata.name": source_ns}
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    return True
                ns_ok = _matches(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else source_ns == "escalon"
                pod_ok = _matches(peer["podSelector"], source) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


def pods_and_ports(rendered: Rendered) -> list[tuple[str, dict[str, str], int]]:
    out = []
    for owner, template in rendered.pod_templates():
        for c in template["spec"]["containers"]:
            for port in c.get("ports", []):
                out.append((owner, template["metadata"]["labels"], port["containerPort"]))
    return out


def test_only_router_and_gateway_are_reachable_from_outside_the_release(dev: Rendered) -> None:
    policies = dev.kind("NetworkPolicy")
    outsider = {"app": "somebody-else"}
    reachable = {
        (owner, port)
        for owner, labels, port in pods_and_ports(dev)
        if admits(policies, labels, port, "elsewhere", outsider)
    }
    assert reachable == {("Deployment/escalon-router", 50051), ("Deployment/escalon-gateway", 8080)}
    # ...while the release's own pods still reach each other.
    insider = {"app.kubernetes.io/instance": "escalon"}
    for owner, labels, port in pods_and_ports(dev):
        assert admits(policies, labels, port, "escalon", insider), (owner, port)
    # A pod of the same namespace that is not part of the release is an outsider too.
    assert not admits(policies, dev.get("Deployment", "escalon-serving")["spec"]["template"]["metadata"]["labels"],
                      50053, "escalon", outsider)


def test_operators_reach_only_what_they_need(chart: ChartRenderer) -> None:
    rendered = chart.render({"distill": {"keda": {"enabled": True}}})
    policies = rendered.kind("NetworkPolicy")
    head = rendered.kind("RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert admits(policies, head, 8265, "kuberay-system", {})
    assert not admits(policies, head, 10001, "kuberay-system", {})
    redis = rendered.get("StatefulSet", "escalon-redis")["spec"]["template"]["metadata"]["labels"]
    assert admits(policies, redis, 6379, "keda", {})
    assert not admits(policies, redis, 6379, "elsewhere", {})


def test_public_sources_can_be_narrowed(prod: Rendered) -> None:
    policies = prod.kind("NetworkPolicy")
    router = prod.get("Deployment", "escalon-router")["spec"]["template"]["metadata"]["labels"]
    assert admits(policies, router, 50051, "ingress-nginx", {})
    assert not admits(policies, router, 50051, "random-namespace", {})


def test_values_files_never_hold_secrets() -> None:
    for path in VALUES_DIR.glob("*.yaml"):
        text = path.read_text()
        assert "sk-" not in text and "password:" not in text.lower(), path
        values = yaml.safe_load(text)
        for tier in values.get("tiers", {}).values():
            assert not {"apiKey", "api_key"} & set(tier or {}), path

