"""How the CLI shows a route: the answer, then one line per rung tried."""

from __future__ import annotations

from escalon.gen.router.v1 import router_pb2


def route_trace(response: router_pb2.RouteResponse) -> str:
    lines = [
        f"answer      {response.answer.strip()}",
        f"rung        {response.rung}   confidence {response.confidence:.2f}   "
        f"cost ${response.total_cost_usd:.6f}   {response.total_latency_ms:.0f} ms",
        f"policy      {response.policy}",
        f"why         {response.reason}",
    ]
    if response.labels:
        lines.append("labels      " + ", ".join(f"{l.dimension}={l.label} ({l.probability:.2f})" for l in response.labels))
    lines.append("")
    lines.append(f"  {'rung':<16}{'n':>3} {'cost $':>11} {'ms':>8} {'conf':>6}  {'answer':<12} judges")
    for a in response.attempts:
        mark = "✔" if a.accepted else ("·" if a.samples else "✗")
        judges = " ".join(f"{s.judge}={s.score:.2f}" for s in a.judge_scores if not s.skipped)
        skipped = [s.judge for s in a.judge_scores if s.skipped]
        if skipped:
            judges += f"  (skipped: {', '.join(skipped)})"
        if a.note:
            judges = a.note
        parsed = (a.parsed_answer or "-")[:12]
        lines.append(f"{mark} {a.rung:<16}{a.samples:>3} {a.cost_usd:>11.6f} {a.latency_ms:>8.0f} "
                     f"{a.confidence:>6.2f}  {parsed:<12} {judges}")
    if response.trace_id:
        lines.append(f"\ntrace {response.trace_id}")
    return "\n".join(lines)
