"""`escalon cluster promote`: apply a promote job's winner to the cluster by hand — the catalogue ConfigMap and the
tiers' RayService, with server-side apply (escalon.offline.jobs.cluster), or only print the diff (--dry-run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  escalon cluster promote --promotion jobs/p1/promotion.json --kubeconfig ~/.kube/config --namespace escalon \\
      --configmap escalon-catalogue --rayservice escalon-tiers --dry-run
  escalon cluster promote --promotion jobs/p1 --configmap escalon-catalogue      # in a pod: its service account
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="apply a promoted student in a Kubernetes cluster")
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "promote", help="server-side apply a promotion to the catalogue ConfigMap and the RayService",
        description="Read a finished promote job's promotion.json and apply its rung, under the field manager "
                    "escalon-promote, to the catalogue ConfigMap (key catalogue.promoted.yaml, which routers and "
                    "serving fronts re-read without a restart) and, when named, the tiers' RayService (a Serve "
                    "application on the base rung's workers). --dry-run sends the same applies with dryRun=All and "
                    "prints the diff; nothing changes. Unset options come from ESCALON_PROMOTE_* as the job reads them.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--promotion", type=Path, required=True, help="the promote job's folder, or its promotion.json")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file [in a pod: its service account]")
    p.add_argument("--context", help="kubeconfig context [its current one]")
    p.add_argument("--namespace", help="[the pod's, or the context's]")
    p.add_argument("--configmap", help="the rung catalogue ConfigMap (<release>-catalogue)")
    p.add_argument("--rayservice", help="the tiers' RayService (<release>-tiers); omit for remote rungs only")
    p.add_argument("--base", help="the student's base rung [recorded in promotion.json]")
    p.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")


def run(args: argparse.Namespace) -> int:
    from escalon.config import load_settings
    from escalon.errors import ConfigError
    from escalon.offline.jobs.cluster import ClusterSettings, apply_promotion
    from escalon.registry import Rung

    path = args.promotion / "promotion.json" if args.promotion.is_dir() else args.promotion
    try:
        promotion = json.loads(path.read_text())
        rung = Rung.model_validate(promotion["rung"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path} is not a promote job's promotion.json ({type(exc).__name__}: {exc})") from None
    if not promotion.get("wins"):
        raise ConfigError(f"{path}: the student did not win ({promotion.get('reason', '?')}); nothing to apply")
    base = args.base or promotion.get("base_rung")
    if not base:
        raise ConfigError(f"{path} records no base rung; give --base")
    overrides = {k: v for k, v in {"kubeconfig": args.kubeconfig, "context": args.context, "namespace": args.namespace,
                                   "configmap": args.configmap, "rayservice": args.rayservice}.items() if v}
    out = apply_promotion(rung, base, load_settings(ClusterSettings, **overrides), dry_run=args.dry_run)
    print(out["diff"] or "(no change: already applied)", end="" if out["diff"] else "\n")
    print(f"{'dry run, nothing applied' if out['dry_run'] else 'applied'}: {', '.join(out['objects'])} "
          f"in namespace {out['namespace']} (field manager {out['field_manager']})")
    return 0
