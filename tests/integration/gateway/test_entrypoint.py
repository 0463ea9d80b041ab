"""`python -m escalon.gateway` as its own process, as `escalon up` and the chart start it: readiness follows the
router, and SIGTERM lets an in-flight answer finish before the process exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from escalon.registry import load_catalogue
from escalon.router.servicer import RouterService
from escalon.router.settings import RouterSettings
from tests.integration.gateway.stack import LOCAL, ROOT, RUNGS, free_port

pytestmark = pytest.mark.integration


def _wait_status(url: str, status: int, process: subprocess.Popen, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the gateway exited with {process.returncode}"
        try:
            reply = httpx.get(url, timeout=5)
            if reply.status_code == status:
                return reply
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s")


def test_ready_once_the_router_serves_and_graceful_on_sigterm(stack, tmp_path):
    router_port, port = free_port(), free_port()
    env = dict(os.environ, ESCALON_GATEWAY_PORT=str(port), ESCALON_GATEWAY_ROUTER_ADDRESS=f"127.0.0.1:{router_port}",
               ESCALON_GATEWAY_SERVING_ADDRESS=stack.address("serving"),
               ESCALON_GATEWAY_DISTILL_ADDRESS=stack.address("distill"),
               ESCALON_GRACE_SECONDS="20", OTEL_TRACES_EXPORTER="none")
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "escalon.gateway"], env=env, cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        not_ready = _wait_status(f"{url}/healthz", 503, process)
        assert "UNAVAILABLE" in not_ready.json()["router"]
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200

        # Now the router it points at starts: readiness follows without a gateway restart.
        settings = RouterSettings(port=router_port, rungs=RUNGS, local_samples=1, grace_seconds=1,
                                  serving_address=stack.address("serving"), judge_address=stack.address("judge"))
        stack.loop.run(stack.start_server("late-router", RouterService(settings, load_catalogue()), settings,
                                          "escalon-router"))
        _wait_status(f"{url}/healthz", 200, process)

        answers: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/v1/chat/completions", timeout=120,
            json={"model": LOCAL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 24})))
        asking.start()
        time.sleep(0.5)  # the answer is being generated when the stop begins
        process.send_signal(signal.SIGTERM)
        asking.join(120)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert answers[0].json()["escalon"]["rung"] == LOCAL
        # uvicorn re-raises the signal once its graceful stop is done; it never needed a SIGKILL.
        assert process.wait(30) == -signal.SIGTERM
        assert b"Application shutdown complete" in (tmp_path / "gateway.log").read_bytes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
