"""`escalon router fold-in`: route to a rung the distill `promote` job proved, in a router artefact, without
retraining (a new artefact version; a running router swaps to it by itself)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  escalon router fold-in --artefact reports/dcrouter/artefact --promotion ~/.local/share/escalon/jobs/<id>
  escalon router fold-in --artefact $ESCALON_ROUTER_ARTEFACT --promotion jobs/<id>/promotion.json --task gsm8k
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    router = sub.add_parser("router", help="maintain the router's trained artefact")
    actions = router.add_subparsers(dest="router_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "fold-in", help="add a promoted student to a router artefact as a new rung column",
        description="Read a finished promote job's promotion.json and profile.json and add the promoted rung to "
                    "the artefact: on the task it was measured on it gets the target rung's profile scaled by "
                    "the accuracy ratio measured there; on every other task it borrows the weakest rung's "
                    "numbers, so it is only preferred where it was proven. Writes a new artefact version in "
                    "place (atomically); a router started with ESCALON_ROUTER_ARTEFACT picks it up by itself.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artefact", type=Path, required=True, help="the router artefact folder (manifest.json inside)")
    p.add_argument("--promotion", type=Path, required=True,
                   help="the promote job's artefact folder, or its promotion.json")
    p.add_argument("--task", help="the artefact's taxonomy task the student was measured on [the profile's only task]")


def run(args: argparse.Namespace) -> int:
    from escalon.offline.evaluation.fold import fold_promotion

    changed = fold_promotion(args.artefact, args.promotion, args.task)
    print(json.dumps(changed, indent=1))
    return 0
