"""The CLI's commands: thin clients of the services' gRPC APIs."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from escalon.cli import parse_params
from escalon.cli.render import route_trace
from escalon.offline.stack import DEMO_PROMPT, plan_stack, start_stack, stop_stack, supervise
from escalon.auth import key_interceptors
from escalon.config import load_settings
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.distill.v1 import distill_pb2, distill_pb2_grpc
from escalon.gen.router.v1 import router_pb2, router_pb2_grpc
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc
from escalon.tracecollector import render_tree

ANSWER_TYPES = {"number": AnswerType.ANSWER_TYPE_NUMBER, "choice": AnswerType.ANSWER_TYPE_CHOICE,
                "yes-no": AnswerType.ANSWER_TYPE_YES_NO, "free-text": AnswerType.ANSWER_TYPE_FREE_TEXT,
                "code": AnswerType.ANSWER_TYPE_CODE}


def _address(explicit: str | None, settings_path: str) -> str:
    if explicit:
        return explicit
    module, cls = settings_path.rsplit(".", 1)
    settings = load_settings(getattr(__import__(module, fromlist=[cls]), cls))
    return f"127.0.0.1:{settings.port}"


async def up(args: argparse.Namespace) -> int:
    stack = plan_stack(with_worker=not args.no_worker, with_gateway=not args.no_gateway)
    print(f"Starting the Escalon stack (data in {stack.data_dir}); the first start converts the local models "
          "(about a minute).")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start_stack(stack)
        print(f"\nEscalon is up. Router API: {stack.router_address}")
        if stack.gateway_url:
            print(f"OpenAI-compatible API: {stack.gateway_url}/v1  ·  operator's page: {stack.gateway_url}/ops")
        if args.demo:
            await _demo(stack)
        if not args.exit_after_demo:
            print("\nServing until Ctrl-C. Try:  escalon ask \"What is 15% of 80?\" --answer-type number")
            supervisor = asyncio.create_task(supervise(stack))  # restarts a child that exits, with backoff
            await stop.wait()
            stack.stopping = True
            supervisor.cancel()
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"escalon up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nStopping the stack...")
        await stop_stack(stack)
        print("Stopped.")


async def _demo(stack) -> None:
    print(f"\nDemo question (GSM8K):\n  {DEMO_PROMPT}\n")
    async with grpc.aio.insecure_channel(stack.router_address, interceptors=key_interceptors()) as channel:
        response = await router_pb2_grpc.RouterServiceStub(channel).Route(
            router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER), timeout=600)
    print(route_trace(response))
    if stack.collector and response.trace_id:
        spans = await stack.collector.wait_for(response.trace_id, {"escalon-router", "escalon-serving", "escalon-judge"})
        print("\nSpans of this route (router → serving → judge):")
        print(render_tree(spans))


async def ask(args: argparse.Namespace) -> int:
    request = router_pb2.RouteRequest(prompt=args.prompt, operating_point=args.operating_point, pin_rung=args.rung)
    if args.max_cost is not None:
        request.max_cost_usd = args.max_cost
    if args.min_quality is not None:
        request.min_quality = args.min_quality
    if args.answer_type:
        request.answer_type = ANSWER_TYPES[args.answer_type]
    address = _address(args.address, "escalon.router.settings.RouterSettings")
    async with grpc.aio.insecure_channel(address, interceptors=key_interceptors()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        if args.stream:
            response = None
            async for item in stub.RouteStream(router_pb2.RouteStreamRequest(request=request), timeout=900):
                which = item.WhichOneof("payload")
                if which == "event":
                    print(f"\n[{router_pb2.RouteEventKind.Name(item.event.kind)[17:].lower()}] {item.event.message}")
                elif which == "token":
                    print(item.token.text, end="", flush=True)
                else:
                    response = item.result
            print()
        else:
            response = await stub.Route(request, timeout=900)
    print(json_format.MessageToJson(response) if args.json else route_trace(response))
    return 0


async def models(args: argparse.Namespace) -> int:
    address = _address(args.address, "escalon.serving.settings.ServingSettings")
    async with grpc.aio.insecure_channel(address, interceptors=key_interceptors()) as channel:
        reply = await serving_pb2_grpc.ModelServingServiceStub(channel).ListModels(serving_pb2.ListModelsRequest(),
                                                                                    timeout=30)
    print(f"{'rung':<16} {'family':<10} {'backend':<11} {'$in/1M':>8} {'$out/1M':>8} {'context':>8}  health")
    for r in reply.rungs:
        health = "ok" if r.healthy else f"DOWN {r.status}"
        print(f"{r.name:<16} {r.family:<10} {r.backend:<11} {r.input_usd_per_1m:>8.3f} {r.output_usd_per_1m:>8.3f} "
              f"{r.context_limit:>8}  {health}")
    return 0


async def jobs(args: argparse.Namespace) -> int:
    address = _address(args.address, "escalon.distill.settings.DistillSettings")
    async with grpc.aio.insecure_channel(address, interceptors=key_interceptors()) as channel:
        stub = distill_pb2_grpc.DistillServiceStub(channel)
        action = args.jobs_command
        if action == "submit":
            params = Struct()
            values = parse_params(args.param)
            for flag in ("teacher", "student", "data", "target"):
                if getattr(args, flag, None):
                    values[flag] = getattr(args, flag)
            params.update(values)
            reply = await stub.SubmitJob(distill_pb2.SubmitJobRequest(job_id=args.id, kind=args.kind, params=params,
                                                                      queue=args.queue), timeout=30)
            print(f"{'submitted' if reply.created else 'already known'}: {reply.job.job_id} ({reply.job.kind}, "
                  f"{_state(reply.job)})")
            return await _watch(stub, reply.job.job_id) if args.watch else 0
        if action == "status":
            reply = await stub.GetJob(distill_pb2.GetJobRequest(job_id=args.job_id), timeout=30)
            print(json_format.MessageToJson(reply.job))
            return 0
        if action == "watch":
            return await _watch(stub, args.job_id)
        if action == "cancel":
            reply = await stub.CancelJob(distill_pb2.CancelJobRequest(job_id=args.job_id), timeout=30)
            print(f"{reply.job.job_id}: {_state(reply.job)}")
            return 0
        state = distill_pb2.JobState.Value(f"JOB_STATE_{args.state.upper()}") if args.state else 0
        reply = await stub.ListJobs(distill_pb2.ListJobsRequest(page_size=args.limit, state=state, kind=args.kind),
                                    timeout=30)
        print(f"{'job id':<38} {'kind':<10} {'state':<10} {'progress':>8}  message")
        for job in reply.jobs:
            print(f"{job.job_id:<38} {job.kind:<10} {_state(job):<10} {job.progress:>8.0%}  {job.message}")
        return 0


def _state(job: distill_pb2.Job) -> str:
    return distill_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


async def _watch(stub: distill_pb2_grpc.DistillServiceStub, job_id: str) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Column

    last = None
    # The bar and clock keep their width; a long message is what gets cut in a narrow terminal.
    message = TextColumn("{task.fields[message]}", table_column=Column(no_wrap=True, overflow="ellipsis"))
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), message) as progress:
        bar = progress.add_task(job_id[:12], total=1.0, message="")
        async for update in stub.WatchJob(distill_pb2.WatchJobRequest(job_id=job_id)):
            last = update.job
            progress.update(bar, completed=last.progress, message=f"{_state(last)}: {last.message}"[:80])
    if last is None:
        return 1
    print(f"{job_id}: {_state(last)}")
    if last.error:
        print(f"error: {last.error}", file=sys.stderr)
    if last.result.fields:
        print(json_format.MessageToJson(last.result))
    return 0 if last.state == distill_pb2.JOB_STATE_SUCCEEDED else 1
