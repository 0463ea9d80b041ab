"""Promotion in a cluster (escalon.offline.jobs.cluster): the promote job's server-side apply of a promoted rung to
the catalogue ConfigMap and the tiers' RayService, through the real `kubernetes` client.

No Kubernetes API server can run on this machine: the client talks to a fake one (fakeapi.py, an http.server that
answers like the API server for those two objects and records every request). What is checked is what Escalon
sends and does with the answers — apply content type, field manager, force, dry run, the merged objects, the diff,
a refusal — and that a router's catalogue picks the new rung up from a kubelet-style ConfigMap mount without a
restart. How a real API server merges and validates is not checked here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from escalon.distill.jobs import LocalContext
from escalon.registry import Catalogue, LiveCatalogue, Rung, load_catalogue
from escalon.offline.jobs.cluster import ClusterSettings, apply_promotion
from tests.integration.cluster.fakeapi import FakeAPI

pytestmark = pytest.mark.integration

NS, CM, RS = "escalon", "escalon-catalogue", "escalon-tiers"
KEY = "catalogue.promoted.yaml"


def _serve_config() -> str:
    apps = [{"name": n, "route_prefix": f"/{n}", "import_path": "escalon.serving.app:build_app", "args": {"rung": n},
             "deployments": [{"name": n, "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
                              "ray_actor_options": {"num_cpus": 1, "resources": {f"escalon-tier-{n}": 1}}}]}
            for n in ("smollm2-135m", "gemma3-270m")]
    return yaml.safe_dump({"http_options": {"port": 8000}, "applications": apps}, sort_keys=False)


def _student(name: str = "gsm8k-student") -> Rung:
    spec = load_catalogue().get("smollm2-135m").model_dump(mode="json", exclude_none=True)
    spec.update(name=name, backend="hf", model="/var/lib/escalon/jobs/u1/student/merged")
    return Rung.model_validate(spec)


@pytest.fixture
def api(tmp_path: Path):
    earlier = yaml.safe_dump({"rungs": [_student("arith-student").model_dump(mode="json", exclude_none=True)]})
    with FakeAPI() as fake:
        fake.objects[("configmaps", NS, CM)] = {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM, "namespace": NS, "resourceVersion": "7"},
            "data": {"catalogue.yaml": "rungs: []\n", KEY: earlier}}
        fake.objects[("rayservices", NS, RS)] = {
            "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": RS, "namespace": NS},
            "spec": {"serveConfigV2": _serve_config(), "rayClusterConfig": {"rayVersion": "2.40.0"}}}
        fake.kubeconfig(tmp_path / "kubeconfig")
        yield fake


def _settings(tmp_path: Path, **extra) -> ClusterSettings:  # noqa: ANN003
    return ClusterSettings(kubeconfig=tmp_path / "kubeconfig", configmap=CM, rayservice=RS, **extra)


def test_a_dry_run_prints_the_diff_and_changes_nothing(api: FakeAPI, tmp_path: Path) -> None:
    before = {k: yaml.safe_dump(v) for k, v in api.objects.items()}
    out = apply_promotion(_student(), "smollm2-135m", _settings(tmp_path), dry_run=True)
    assert out["dry_run"] and out["namespace"] == NS  # from the kubeconfig's context
    assert out["objects"] == [f"configmap/{CM}", f"rayservice/{RS}"]
    assert out["diff"].count("+- name: gsm8k-student") == 2  # the overlay's rung, the RayService's application
    assert "+++ configmap/escalon-catalogue data.catalogue.promoted.yaml (applied)" in out["diff"]
    assert "+++ rayservice/escalon-tiers spec.serveConfigV2 (applied)" in out["diff"]
    assert "-" + "- name: arith-student" not in out["diff"]  # the earlier promotion stays
    patches = [r for r in api.requests if r["method"] == "PATCH"]
    assert len(patches) == 2
    for r in patches:
        assert r["content_type"].startswith("application/apply-patch+yaml")
        assert r["query"]["fieldManager"] == ["escalon-promote"] and r["query"]["force"] == ["true"]
        assert r["query"]["dryRun"] == ["All"] and r["authorization"] == "Bearer fake-token"
    assert {k: yaml.safe_dump(v) for k, v in api.objects.items()} == before


def test_apply_adds_the_rung_to_both_objects_and_a_router_picks_it_up_from_the_mount(api: FakeAPI,
                                                                                     tmp_path: Path) -> None:
    # The pod's mount, as the kubelet writes it: <dir>/<key> → ..data/<key>, ..data → a timestamped folder,
    # swapped atomically when the ConfigMap changes.
    mount = tmp_path / "etc-escalon"

    def project(data: dict[str, str], stamp: str) -> None:
        folder = mount / stamp
        folder.mkdir(parents=True)
        for k, v in data.items():
            (folder / k).write_text(v)
            if not (mount / k).is_symlink():
                (mount / k).symlink_to(Path("..data") / k)
        (mount / "..data_tmp").symlink_to(stamp)
        os.replace(mount / "..data_tmp", mount / "..data")

    project(api.objects[("configmaps", NS, CM)]["data"], "..2026_12_04_1")
    live = LiveCatalogue(Catalogue(rungs=[load_catalogue().get("smollm2-135m")]), mount / KEY, check_interval_s=0)
    assert live.current().names == ["smollm2-135m", "arith-student"]

    out = apply_promotion(_student(), "smollm2-135m", _settings(tmp_path, mount_dir=Path("/etc/escalon")))
    assert not out["dry_run"]
    cm = api.objects[("configmaps", NS, CM)]
    assert cm["data"]["catalogue.yaml"] == "rungs: []\n"  # the chart's key is left alone
    assert [r["name"] for r in yaml.safe_load(cm["data"][KEY])["rungs"]] == ["arith-student", "gsm8k-student"]
    apps = yaml.safe_load(api.objects[("rayservices", NS, RS)]["spec"]["serveConfigV2"])["applications"]
    assert [a["name"] for a in apps] == ["smollm2-135m", "gemma3-270m", "gsm8k-student"]
    student = apps[-1]
    assert student["args"] == {"rung": "gsm8k-student", "catalogue": "/etc/escalon/catalogue.promoted.yaml"}
    assert student["deployments"][0]["ray_actor_options"]["resources"] == {"escalon-tier-smollm2-135m": 1}
    assert student["deployments"][0]["name"] == "gsm8k-student" and student["route_prefix"] == "/gsm8k-student"
    assert apps[0] == yaml.safe_load(_serve_config())["applications"][0]  # other tiers untouched

    project(cm["data"], "..2026_12_04_2")  # the kubelet's next sync
    assert live.current().names == ["smollm2-135m", "arith-student", "gsm8k-student"]
    assert live.current().get("gsm8k-student").backend == "hf"

    again = apply_promotion(_student(), "smollm2-135m", _settings(tmp_path))  # idempotent: a retried job
    assert again["diff"] == ""


def test_the_promote_job_applies_in_the_cluster_and_reports_a_refusal(api: FakeAPI, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from escalon.offline.jobs.promote import PromoteParams, _apply_in_cluster

    params = PromoteParams(student=str(tmp_path), target="mixtral-8x7b", data="d.jsonl", base_rung="smollm2-135m")
    monkeypatch.setenv("ESCALON_PROMOTE_CLUSTER", "off")
    assert _apply_in_cluster(params, _student(), LocalContext(artefact_dir=tmp_path / "job")) is None
    for k, v in {"CLUSTER": "auto", "KUBECONFIG": str(tmp_path / "kubeconfig"), "CONFIGMAP": CM,
                 "RAYSERVICE": RS}.items():
        monkeypatch.setenv(f"ESCALON_PROMOTE_{k}", v)
    ctx = LocalContext(artefact_dir=tmp_path / "job")
    out = _apply_in_cluster(params.model_copy(update={"cluster_dry_run": True}), _student(), ctx)
    assert out["applied"] is False and out["dry_run"] and "gsm8k-student" in (tmp_path / "job" / "cluster.diff").read_text()
    assert ctx.progress[-1][1].startswith("dry run, nothing applied: configmap/escalon-catalogue, rayservice/")
    out = _apply_in_cluster(params, _student(), ctx)
    assert out["applied"] is True and not out["dry_run"]

    api.forbidden.add(RS)  # a Role without the RayService
    out = _apply_in_cluster(params, _student("another-student"), ctx)
    assert out["applied"] is False and "403" in out["reason"] and "Role" in out["reason"]
    assert "escalon cluster promote" in out["fix"]


def test_the_cli_prints_the_dry_run_diff_and_refuses_a_loser(api: FakeAPI, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from escalon.cli import main

    promotion = {"wins": True, "rung": _student().model_dump(mode="json", exclude_none=True),
                 "base_rung": "smollm2-135m", "reason": "student 80% vs target 70%"}
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "promotion.json").write_text(json.dumps(promotion))
    argv = ["cluster", "promote", "--promotion", str(tmp_path / "p1"), "--kubeconfig", str(tmp_path / "kubeconfig"),
            "--configmap", CM, "--rayservice", RS, "--dry-run"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr().out
    assert done.value.code == 0 and "+- name: gsm8k-student" in out
    assert out.rstrip().endswith("dry run, nothing applied: configmap/escalon-catalogue, rayservice/escalon-tiers "
                                 "in namespace escalon (field manager escalon-promote)")
    assert "gsm8k-student" not in api.objects[("configmaps", NS, CM)]["data"][KEY]

    (tmp_path / "p1" / "promotion.json").write_text(json.dumps(promotion | {"wins": False}))
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and "did not win" in capsys.readouterr().err
