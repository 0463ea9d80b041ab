"""The code sandbox's limits, and code answers compared by execution result."""

import socket
import threading

import pytest

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.execution import candidate_program, execution_answers, extract_probes, pass_share
from escalon.judge.panel import Candidate, judge_answers
from escalon.sandbox import Sandbox, SandboxLimits

pytestmark = pytest.mark.unit
CODE = AnswerType.ANSWER_TYPE_CODE


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxLimits(wall_s=3, cpu_s=1, memory_mb=128, output_kb=64))


def test_runaway_programs_are_stopped_and_a_good_one_runs(sandbox):
    loop, sleeper, bomb, printer, ok = sandbox.run_many([
        "while True:\n    pass",
        "import time\ntime.sleep(60)",
        "x = bytearray(2 ** 31)",
        "while True:\n    print('x' * 1000)",
        "print(sum(range(10)))",
    ])
    assert loop.status == "timeout"  # RLIMIT_CPU (SIGXCPU), or the wall clock on a very busy machine
    assert sleeper.status == "timeout" and sleeper.returncode == -9 and sleeper.seconds >= 2.9  # wall clock
    assert bomb.status == "memory"
    assert printer.status == "output-limit"
    assert ok.ok and ok.stdout == "45\n"


def test_the_network_subprocesses_and_outside_writes_are_refused(sandbox, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(listener)))
    thread.start()
    target = tmp_path / "pwned"
    net, sub, write = sandbox.run_many([
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')",
        "import subprocess\nprint(subprocess.run(['id'], capture_output=True).stdout)",
        f"open({str(target)!r}, 'w').write('x')",
    ])
    thread.join()
    listener.close()
    assert net.status == "error" and "connected" not in net.stdout and accepted == [None]
    assert sub.status == "error" and "not allowed" in sub.stderr
    assert write.status == "error" and not target.exists()
    assert any("network" in line for line in sandbox.enforced)


def _accept(listener):
    try:
        return listener.accept()
    except OSError:
        return None


MBPP = ("Write a function to add two numbers.\nYour code should pass these tests:\n"
        "assert add(1, 2) == 3\nassert add(0, 0) == 0\n")


def test_programs_that_behave_alike_agree_however_they_are_written(sandbox):
    texts = ["```python\ndef add(a, b):\n    return a + b\n```",
             "def add(x, y):\n    total = x\n    total += y\n    return total",
             "```python\ndef add(a, b):\n    return a - b\n```",
             "def add(a, b) return a + b",  # does not parse
             "```python\ndef add(a, b):\n    while True:\n        pass\n```"]
    parsed = execution_answers(MBPP, texts, sandbox)
    assert parsed.mode == "probes" and len(parsed.probes) == 2
    assert parsed.parsed[0] == parsed.parsed[1] == 'exec:["pass", "pass"]'
    assert parsed.parsed[2] == 'exec:["fail", "pass"]'
    assert parsed.parsed[3] is None and parsed.parsed[4] is None  # invalid: syntax error, time limit
    assert pass_share(parsed.parsed[2], parsed.probes) == 0.5


def test_doctest_examples_and_function_completions_are_probed(sandbox):
    prompt = ('def double(n: int) -> int:\n    """Twice n.\n    >>> double(2)\n    4\n    >>> double(0)\n    0\n    """\n')
    assert [p.expected for p in extract_probes(prompt)] == ["4", "0"]
    body_only = "    return n * 2\n"
    assert "def double" in candidate_program(prompt, body_only)
    parsed = execution_answers(prompt, [body_only, "def double(n):\n    return n + 2"], sandbox)
    assert parsed.parsed[0] == 'exec:["pass", "pass"]' and parsed.parsed[1] == 'exec:["pass", "fail"]'


def test_the_panel_compares_code_by_execution():
    candidates = [Candidate("def add(a, b):\n    return a + b"), Candidate("def add(a, b):\n    return b + a"),
                  Candidate("def add(a, b):\n    return a * b")]
    verdict = judge_answers(MBPP, candidates, answer_type=CODE, judges=("agreement",))
    assert verdict.scores[0].score == pytest.approx(2 / 3) and verdict.answer == 'exec:["pass", "pass"]'


def test_hostile_programs_are_held(sandbox, tmp_path):
    """Each attack of issue 19 on its own: processes, threads, the file system outside the run's folder (also
    through a symlink), the parent, the parent's secrets, the network. `outside` is world-writable, so only
    the sandbox (not the file permissions of uid nobody) stands between the candidate and it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    outside.chmod(0o777)
    (outside / "keep").chmod(0o666)
    keep, out = str(outside / "keep"), str(outside)
    attacks = {
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "multiprocessing": "import multiprocessing as m\nfor _ in range(200):\n    m.Process(target=print).start()",
        "raw fork_exec": "import _posixsubprocess",
        "thread bomb": "import threading, time\nfor _ in range(100000):\n    threading.Thread(target=time.sleep, args=(9,)).start()",
        "remove": f"import os\nos.remove({keep!r})",
        "rename": f"import os\nos.rename({keep!r}, {keep!r} + '2')",
        "mkdir": f"import os\nos.mkdir({out!r} + '/d')",
        "chmod": f"import os\nos.chmod({keep!r}, 0o600)",
        "os.open": f"import os\nos.write(os.open({out!r} + '/w', os.O_WRONLY | os.O_CREAT), b'x')",
        "symlink out": f"import os\nos.symlink({out!r}, 'link')\nopen('link/w', 'w').write('x')",
        "kill the judge": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "parent's environment": "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())",
        "name lookup": "import socket\nsocket.getaddrinfo('example.com', 80)",
        "raw socket": "import _socket\n_socket.socket().connect(('127.0.0.1', 22))",
    }
    results = dict(zip(attacks, sandbox.run_many(list(attacks.values())), strict=True))
    held = {name: r.status for name, r in results.items() if not r.ok}
    assert held.keys() == attacks.keys(), {n: r.stdout[:80] for n, r in results.items() if r.ok}
    assert sorted(p.name for p in outside.iterdir()) == ["keep"] and (outside / "keep").read_text() == "x"
    assert "PermissionError" in results["symlink out"].stderr
    assert held["fork bomb"] == "error" and held["thread bomb"] in ("error", "timeout")
