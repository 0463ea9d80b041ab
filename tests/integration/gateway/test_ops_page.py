"""The operator's page: its JSON from the running stack's own APIs, and the page itself in headless Chromium
(driven over the DevTools protocol), which must show the stack's rungs and log no console error."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from escalon.offline.stack import DEMO_PROMPT
from tests.integration.gateway.stack import GPT4, LOCAL, MIXTRAL, RUNGS

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def traffic(gateway):
    """Routes through the gateway for the page to count: two replay answers (fast) of the recorded question."""
    sdk = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
    for model in (MIXTRAL, GPT4):
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": DEMO_PROMPT}])
    return gateway


def test_ops_api_reports_rungs_jobs_traffic_and_frontier(stack, traffic):
    get = lambda path: httpx.get(f"{traffic.url}{path}", timeout=30).json()  # noqa: E731
    rungs = get("/ops/api/rungs")
    assert rungs["error"] is None
    assert [r["name"] for r in rungs["rungs"]] == RUNGS and all(r["healthy"] for r in rungs["rungs"])

    jobs = get("/ops/api/jobs")
    assert jobs["error"] is None
    job = next(j for j in jobs["jobs"] if j["job_id"] == stack.job_id)
    assert job["kind"] == "profile" and job["state"] == "queued" and job["progress"] == 0

    summary = get("/ops/api/traffic")
    assert summary["routes"] >= 2 and summary["total_cost_usd"] > 0
    assert summary["rungs"][GPT4]["answered"] >= 1 and summary["rungs"][GPT4]["spend_usd"] > 0
    assert sum(summary["confidence_histogram"]) == summary["routes"]
    assert sum(summary["spend_per_bucket_usd"]) == pytest.approx(summary["total_cost_usd"])

    frontier = get("/ops/api/frontier")
    assert frontier["source"] == "live"
    assert {p["name"] for p in frontier["points"]} >= {MIXTRAL, GPT4}


def test_page_shows_the_running_stacks_rungs_without_console_errors(stack, traffic, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium (Debian's package)")
    websockets = pytest.importorskip("websockets.sync.client", reason="the DevTools client needs `websockets`")
    with Chromium(tmp_path) as browser, websockets.connect(browser.page_socket(), max_size=None) as ws:
        devtools = DevTools(ws)
        for domain in ("Runtime", "Log", "Page"):
            devtools.call(f"{domain}.enable")
        devtools.call("Page.navigate", url=f"{traffic.url}/ops")
        loaded = devtools.wait_for("location.pathname === '/ops' && document.body !== null && "
                                   "document.body.dataset.loaded === 'true'", timeout=30)
        assert loaded, "the page did not finish its first refresh"
        rows = devtools.evaluate("Array.from(document.querySelectorAll('#rung-rows tr')).map(r => r.dataset.rung)")
        jobs = devtools.evaluate("Array.from(document.querySelectorAll('#job-rows tr')).map(r => r.dataset.job)")
        points = devtools.evaluate("document.querySelectorAll('#frontier-chart circle').length")
        bars = devtools.evaluate("document.querySelectorAll('#spend-chart rect').length")
        text = devtools.evaluate("document.body.innerText")
        devtools.pump(1.0)  # let late messages (a failed fetch, an exception) arrive

    assert rows[: len(RUNGS)] == RUNGS, rows
    assert stack.job_id in jobs
    assert points >= 2 and bars >= 1
    assert LOCAL in text and "in memory" in text  # the page says where its traffic figures come from
    assert devtools.problems == [], json.dumps(devtools.problems, indent=1)


class Chromium:
    """Headless Chromium with the DevTools protocol on a free port (it writes the port to DevToolsActivePort)."""

    def __init__(self, tmp: Path) -> None:
        self.profile = tmp / "chromium-profile"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Chromium:
        self.process = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {self.process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        return self

    def page_socket(self) -> str:
        targets = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class DevTools:
    """A minimal Chrome DevTools Protocol client that records console errors, exceptions and error logs."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.problems: list[dict] = []

    def _note(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.problems.append({"exception": params["exceptionDetails"]})
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.problems.append({"console": [a.get("value", a.get("description")) for a in params.get("args", [])]})
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.problems.append({"log": params["entry"]})

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._note(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            self.pump(0.1)
        return False

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._note(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return
