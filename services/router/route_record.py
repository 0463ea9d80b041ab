"""One route as a row of the route log (escalon.db.models.Route): the knob, the plan, every attempt and the
outcome. Prompts and answers are kept only when the operator opted in (ESCALON_ROUTE_LOG_PROMPTS); otherwise
their SHA-256 and length, so routes can still be grouped by prompt and audited without holding the text."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
from typing import Any

from escalon.db.keys import KeyRecord
from escalon.gen.common.v1 import common_pb2
from escalon.gen.router.v1 import router_pb2
from escalon.router.policy import RoutePlan

UTC = dt.UTC
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _answer_type(value: int) -> str:
    name = common_pb2.AnswerType.Name(value) if value in common_pb2.AnswerType.values() else ""
    return name.removeprefix("ANSWER_TYPE_").lower().replace("_", "-") if value else ""


def _attempt(a: router_pb2.RungAttempt, final: bool, keep_text: bool) -> dict[str, Any]:
    answered = a.samples > 0
    return {
        "rung": a.rung, "family": a.family, "samples": a.samples,
        "input_tokens": a.usage.input_tokens, "output_tokens": a.usage.output_tokens,
        "cost_usd": a.cost_usd, "latency_ms": round(a.latency_ms, 3), "confidence": a.confidence,
        "accepted": a.accepted, "escalated": answered and not a.accepted and not final,
        "parsed_answer": a.parsed_answer if keep_text else "", "answer": a.answer if keep_text else "",
        "answer_sha256": _sha(a.answer) if a.answer else "", "note": a.note,
        "judge_scores": [{"judge": s.judge, "score": s.score, "skipped": s.skipped} for s in a.judge_scores],
    }


def route_row(request: router_pb2.RouteRequest, *, response: router_pb2.RouteResponse | None,
              plan: RoutePlan | None, key: KeyRecord | None, keep_text: bool, latency_ms: float,
              status: str = "OK", error: str = "", request_id: str = "", threshold: float | None = None,
              now: dt.datetime | None = None) -> dict[str, Any]:
    """The row for one route, answered (`response`) or refused (`status`, `error`)."""
    labels = plan.labels if plan is not None else ()
    task = next((l.label for l in labels if l.dimension == "task_type"), None)
    attempts = list(response.attempts) if response is not None else []
    final_index = next((i for i, a in enumerate(attempts) if response and a.rung == response.rung and a.samples),
                       None)
    answer = response.answer if response is not None else ""
    return {
        "created_at": now or dt.datetime.now(UTC),
        "request_id": (response.request_id if response is not None else "") or request.request_id or request_id,
        "trace_id": response.trace_id if response is not None else "",
        "replica": REPLICA,
        "tenant": key.tenant if key else None,
        "key_id": key.key_id if key else None,
        "status": status,
        "error": error[:2000],
        "operating_point": request.operating_point,
        "knob": {"operating_point": request.operating_point,
                 "max_cost_usd": request.max_cost_usd if request.HasField("max_cost_usd") else None,
                 "min_quality": request.min_quality if request.HasField("min_quality") else None,
                 "pin_rung": request.pin_rung, "max_tokens": request.max_tokens, "threshold": threshold},
        "answer_type": _answer_type(request.answer_type),
        "task": task,
        "policy": plan.policy if plan is not None else "",
        "plan": {"rungs": list(plan.rungs) if plan is not None else [],
                 "reason": plan.reason if plan is not None else "",
                 "threshold": plan.threshold if plan is not None else None,
                 "labels": [{"dimension": l.dimension, "label": l.label, "probability": l.probability}
                            for l in labels],
                 "predicted_success": {k: float(v) for k, v in (plan.predicted_success if plan else {}).items()}},
        "attempts": [_attempt(a, i == final_index, keep_text) for i, a in enumerate(attempts)],
        "rung": response.rung if response is not None else None,
        "confidence": response.confidence if response is not None else None,
        "total_cost_usd": response.total_cost_usd if response is not None else 0.0,
        "latency_ms": round(latency_ms, 3),
        "prompt": request.prompt if keep_text else None,
        "prompt_sha256": _sha(request.prompt),
        "prompt_chars": len(request.prompt),
        "answer": answer if keep_text and response is not None else None,
        "answer_sha256": _sha(answer) if answer else "",
        "answer_chars": len(answer),
    }
