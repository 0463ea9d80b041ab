"""The operator's page and the JSON it reads.

The page (`/` and `/ops`) is one HTML file, one script and one stylesheet from this package: no build step,
no CDN, charts drawn as inline SVG. Its data comes from the services' own APIs, fetched when the page asks:
  /ops/api/rungs     ModelServing.ListModels: the rungs with price, limits and health
  /ops/api/jobs      Distill.ListJobs: the latest jobs with state and progress
  /ops/api/traffic   this gateway's traffic window (traffic.py): share, escalation rate, confidence, spend
  /ops/api/frontier  an eval report when ESCALON_GATEWAY_FRONTIER_REPORT names one, else the live window
An upstream that does not answer is reported in the payload (`error`), with a 200: the gateway answered,
the page shows which source is down. With API keys configured the data needs a key like the API does.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from escalon.errors import ConfigError
from escalon.gateway.errors import ErrorResponse
from escalon.gateway.limits import caller_key
from escalon.gateway.traffic import frontier_from_report
from escalon.gen.distill.v1 import distill_pb2
from escalon.gen.serving.v1 import serving_pb2

router = APIRouter()
_ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
# The page loads only its own script and stylesheet: no inline script, nothing from elsewhere.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_AUTH = {401: {"model": ErrorResponse, "description": "no API key"},
         403: {"model": ErrorResponse, "description": "API key not allowed"}}


def _asset(name: str) -> str:
    return resources.files("escalon.gateway").joinpath(name).read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
@router.get("/ops", response_class=HTMLResponse, tags=["ops"], summary="The operator's page")
async def page() -> HTMLResponse:
    return HTMLResponse(_asset("page.html"), headers={"content-security-policy": _CSP, "cache-control": "no-cache"})


@router.get("/ops/page.js", include_in_schema=False)
@router.get("/ops/page.css", include_in_schema=False)
async def asset(request: Request) -> Response:
    name = request.url.path.rsplit("/", 1)[1]
    return Response(_asset(name), media_type=_ASSETS[name], headers={"cache-control": "no-cache"})


# ---- data ------------------------------------------------------------------------------------------------

class RungInfo(BaseModel):
    name: str
    family: str
    backend: str
    model: str
    prompt_format: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    context_limit: int
    healthy: bool
    status: str


class RungsReply(BaseModel):
    source: str
    error: str | None
    rungs: list[RungInfo]


class JobInfo(BaseModel):
    job_id: str
    kind: str
    state: str
    progress: float
    message: str
    error: str
    queue: str
    attempts: int
    created_at: str | None
    updated_at: str | None


class JobsReply(BaseModel):
    source: str
    error: str | None
    jobs: list[JobInfo]


class FrontierPoint(BaseModel):
    name: str
    n: int | None = None
    cost_usd: float
    quality: float
    pareto: bool


class FrontierReply(BaseModel):
    source: str
    description: str
    cost_label: str
    quality_label: str
    error: str | None = None
    points: list[FrontierPoint]


class RungTraffic(BaseModel):
    answered: int
    share: float
    tried: int
    escalated: int
    escalation_rate: float | None
    skipped: int
    spend_usd: float
    confidence_histogram: list[int]


class TrafficReply(BaseModel):
    scope: str
    window_s: float
    max_routes: int
    routes: int
    oldest_age_s: float | None
    total_cost_usd: float
    mean_cost_usd: float | None
    escalation_rate: float | None
    errors: dict[str, int]
    confidence_bins: list[float]
    confidence_histogram: list[int]
    spend_per_bucket_usd: list[float]
    spend_bucket_s: float
    rungs: dict[str, RungTraffic]


def _gateway(request: Request):
    gw = request.app.state.gateway
    gw.guard.caller(request)
    return gw


def _failure(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


@router.get("/ops/api/rungs", response_model=RungsReply, tags=["ops"], responses=_AUTH,
            summary="The rungs served, with price, limits and health (ModelServing.ListModels)")
async def rungs(request: Request) -> RungsReply:
    gw = _gateway(request)
    source = f"ModelServing at {gw.settings.serving_address}"
    try:
        reply = await gw.upstreams.serving.ListModels(serving_pb2.ListModelsRequest(),
                                                      timeout=gw.settings.upstream_timeout_s)
    except grpc.aio.AioRpcError as exc:
        return RungsReply(source=source, error=_failure(exc), rungs=[])
    return RungsReply(source=source, error=None, rungs=[
        RungInfo(name=r.name, family=r.family, backend=r.backend, model=r.model, prompt_format=r.prompt_format,
                 input_usd_per_1m=r.input_usd_per_1m, output_usd_per_1m=r.output_usd_per_1m,
                 context_limit=r.context_limit, healthy=r.healthy, status=r.status) for r in reply.rungs])


@router.get("/ops/api/jobs", response_model=JobsReply, tags=["ops"], responses=_AUTH,
            summary="The latest distillation, evaluation and profiling jobs (Distill.ListJobs)")
async def jobs(request: Request) -> JobsReply:
    gw = _gateway(request)
    source = f"Distill at {gw.settings.distill_address}"
    try:
        reply = await gw.upstreams.distill.ListJobs(distill_pb2.ListJobsRequest(page_size=20),
                                                    timeout=gw.settings.upstream_timeout_s,
                                                    metadata=caller_key(request))
    except grpc.aio.AioRpcError as exc:
        return JobsReply(source=source, error=_failure(exc), jobs=[])
    return JobsReply(source=source, error=None, jobs=[_job(j) for j in reply.jobs])


def _job(job: distill_pb2.Job) -> JobInfo:
    return JobInfo(job_id=job.job_id, kind=job.kind,
                   state=distill_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower(),
                   progress=job.progress, message=job.message, error=job.error, queue=job.queue,
                   attempts=job.attempts, created_at=_when(job, "created_at"), updated_at=_when(job, "updated_at"))


def _when(job: distill_pb2.Job, name: str) -> str | None:
    if not job.HasField(name):
        return None
    stamp = getattr(job, name).ToDatetime(tzinfo=dt.timezone.utc)
    return stamp.isoformat(timespec="seconds")


@router.get("/ops/api/traffic", response_model=TrafficReply, tags=["ops"], responses=_AUTH,
            summary="Traffic share, escalation rate, judge confidence and spend over this gateway's window")
async def traffic(request: Request) -> dict[str, Any]:
    gw = _gateway(request)
    if gw.route_log is None:
        return gw.traffic.summary()
    import asyncio

    from escalon.gateway.traffic import window_from_route_log

    try:
        window = await asyncio.to_thread(window_from_route_log, gw.route_log(), gw.settings.traffic_window_s,
                                         gw.settings.traffic_max_routes)
    except Exception as exc:  # noqa: BLE001 - the page says the database is away and shows this process's window
        summary = gw.traffic.summary()
        summary["scope"] = f"route log unreadable ({type(exc).__name__}); {summary['scope']}"
        return summary
    summary = window.summary()
    summary["scope"] = "every replica's routes, from the route log in the database (ESCALON_DATABASE_URL)"
    return summary


@router.get("/ops/api/frontier", response_model=FrontierReply, tags=["ops"], responses=_AUTH,
            summary="Cost-quality points of the operating points (eval report, or the live window)")
async def frontier(request: Request) -> dict[str, Any]:
    gw = _gateway(request)
    if gw.settings.frontier_report is not None:
        try:
            return frontier_from_report(gw.settings.frontier_report)
        except ConfigError as exc:  # read on each call: a new report shows without a restart
            live = gw.traffic.frontier()
            return {**live, "error": f"{exc}; showing the live window instead"}
    return gw.traffic.frontier()

