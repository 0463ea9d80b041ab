"""Code answers compared by what they do, not how they are written (docs/judges.md, Execution: a
deterministic check, where one exists, beats any model's opinion).

Each candidate's code runs in the sandbox (escalon.sandbox) against *probes* taken from the prompt:
  - `assert ...` lines (MBPP-style tests)                → "pass" | "fail" | "error:<Exception>"
  - doctest examples `>>> expr` with their expected line → "pass" | "fail" | "error:<Exception>"
  - doctest examples without an expected line           → "value:<repr>"
The parsed answer is the tuple of probe outcomes ("exec:[...]"): two programs agree when they behave the
same on every probe, so the consistency and cross-model judges group code by execution result. With no
probes, a program that prints is compared by its output ("stdout:..."); one that prints nothing falls back
to its whitespace-normalised text. Code that does not run (syntax error, crash while defining, time or memory
limit) is invalid, like an unparseable number.

The `execution` judge is the share of the prompt's checkable probes (asserts, examples with an expected
value) that the majority behaviour passes; skipped when the prompt states none.

A function-completion prompt (HumanEval: a signature and docstring) may be answered with the body only: when
the code does not define the prompt's function, the prompt is prepended.
"""

from __future__ import annotations

import ast
import json
import re
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

from escalon.sandbox import Sandbox, SandboxLimits

MAX_PROBES = 20
MARK = "\x00ESCALON-EXEC\x00"
_CODE_FENCE = re.compile(r"```[ \t]*([\w+#-]*)[ \t]*\n(.*?)```", re.DOTALL)
_ASSERT = re.compile(r"^\s*(assert\s+.+?)\s*$", re.MULTILINE)
_DEF = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)

#: The sandbox the current Score call uses; the judge engine sets its configured one for each call.
SANDBOX: ContextVar[Sandbox | None] = ContextVar("escalon_sandbox", default=None)


@lru_cache(maxsize=1)
def default_sandbox() -> Sandbox:
    return Sandbox(SandboxLimits())


def current_sandbox() -> Sandbox:
    return SANDBOX.get() or default_sandbox()


@dataclass(frozen=True)
class Probe:
    kind: str  # "assert" | "example"
    source: str
    expected: str | None = None

    @property
    def checkable(self) -> bool:
        return self.kind == "assert" or self.expected is not None


def extract_probes(prompt: str) -> list[Probe]:
    probes: list[Probe] = []
    seen: set[str] = set()
    for match in _ASSERT.finditer(prompt):
        stmt = match.group(1)
        if stmt not in seen and _compiles(stmt, "exec"):
            seen.add(stmt)
            probes.append(Probe("assert", stmt))
    lines = prompt.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith(">>> "):
            continue
        expr = stripped[4:].strip()
        if expr in seen or not _compiles(expr, "eval"):
            continue
        seen.add(expr)
        expected = []
        for nxt in lines[i + 1:]:
            text = nxt.strip()
            if not text or text.startswith(">>>") or text.startswith('"""') or text.startswith("'''"):
                break
            expected.append(text)
        probes.append(Probe("example", expr, "\n".join(expected) or None))
    return probes[:MAX_PROBES]


def extract_code(text: str) -> str | None:
    """The Python fenced block (the longest, when several), else the whole text."""
    blocks = [(lang.lower(), body) for lang, body in _CODE_FENCE.findall(text)]
    python = [body for lang, body in blocks if lang in ("", "python", "py", "python3")]
    body = max(python or [b for _, b in blocks] or [text], key=len)
    return body.strip("\n") or None if body.strip() else None


def candidate_program(prompt: str, text: str) -> str | None:
    code = extract_code(text)
    if code is None:
        return None
    wanted = _DEF.findall(prompt)
    if wanted and not any(name in _DEF.findall(code) for name in wanted) and _compiles(prompt.strip() + "\n    pass", "exec"):
        # A completion of the prompt's function: the prompt's signature and docstring, then the body.
        body = code if code.startswith((" ", "\t")) else "\n".join("    " + ln for ln in code.splitlines())
        code = prompt.rstrip() + "\n" + body
    return code


@dataclass(frozen=True)
class ExecutionParse:
    parsed: tuple[str | None, ...]
    mode: str  # "probes" | "stdout" | "text"
    probes: tuple[Probe, ...]
    statuses: tuple[str, ...]  # the sandbox status of each candidate ("no-code" when there was none)


def execution_answers(prompt: str, texts: list[str], sandbox: Sandbox | None = None) -> ExecutionParse:
    sandbox = sandbox or current_sandbox()
    probes = extract_probes(prompt)
    programs = [candidate_program(prompt, t) for t in texts]
    runnable = [i for i, p in enumerate(programs) if p is not None and _compiles(p, "exec")]
    results = dict(zip(runnable, sandbox.run_many([_harness(programs[i], probes) for i in runnable])))
    parsed: list[str | None] = []
    statuses: list[str] = []
    mode = "probes" if probes else "stdout"
    for i, program in enumerate(programs):
        if program is None:
            parsed.append(None)
            statuses.append("no-code")
            continue
        if i not in results:
            parsed.append(None)
            statuses.append("syntax-error")
            continue
        result = results[i]
        statuses.append(result.status)
        report = _report(result.stdout) if result.ok else None
        if report is None or "define" in report:
            parsed.append(None)
            continue
        if probes:
            parsed.append("exec:" + json.dumps(report["probes"]))
        elif report["stdout"].strip():
            parsed.append("stdout:" + report["stdout"].strip()[:2000])
        else:
            parsed.append("text:" + _normalise(program))
    if not probes and any(p is not None and p.startswith("text:") for p in parsed):
        mode = "text"
    return ExecutionParse(tuple(parsed), mode, tuple(probes), tuple(statuses))


def has_checks(prompt: str) -> bool:
    """Whether the prompt states tests or examples with expected values (cheap: no program runs)."""
    return ("assert" in prompt or ">>>" in prompt) and any(p.checkable for p in extract_probes(prompt))


def checked_answers(prompt: str, texts: list[str | None], sandbox: Sandbox | None = None
                    ) -> list[tuple[str, float] | None] | None:
    """Code answers to a prompt that carries tests, judged by running them: per answer its behaviour key
    ("exec:[...]", equal for programs that pass and fail the same probes) and the share of the prompt's
    checkable probes it passes (0 for code that does not run). None for an answer that is not code (no
    function definition), and None overall when the prompt states no checkable test — callers then compare
    text. Used by cascade routing's post-hoc estimates (docs/cascade-routing.md)."""
    if not prompt or not has_checks(prompt):
        return None
    probes = extract_probes(prompt)
    out: list[tuple[str, float] | None] = [None] * len(texts)
    programs = {i: candidate_program(prompt, t) for i, t in enumerate(texts) if isinstance(t, str) and t.strip()}
    code = {i: p for i, p in programs.items() if p is not None and _DEF.search(p)}
    runnable = [i for i, p in code.items() if _compiles(p, "exec")]
    results = dict(zip(runnable, (sandbox or current_sandbox()).run_many([_harness(code[i], probes)
                                                                           for i in runnable])))
    for i in code:
        report = _report(results[i].stdout) if i in results and results[i].ok else None
        if report is None or "define" in report:
            out[i] = ("exec:broken", 0.0)
            continue
        parsed = "exec:" + json.dumps(report["probes"])
        out[i] = (parsed, pass_share(parsed, tuple(probes)) or 0.0)
    return out


def pass_share(parsed: str | None, probes: tuple[Probe, ...]) -> float | None:
    """Share of checkable probes an execution signature passes; None when there are none to check."""
    checkable = [i for i, p in enumerate(probes) if p.checkable]
    if not checkable or parsed is None or not parsed.startswith("exec:"):
        return None
    outcomes = json.loads(parsed[5:])
    return sum(outcomes[i] == "pass" for i in checkable) / len(checkable)


def _harness(program: str, probes: list[Probe]) -> str:
    spec = [(p.kind, p.source, p.expected) for p in probes]
    return f'''
import contextlib as _cl, io as _io, json as _json, sys as _sys
_out = _sys.stdout
_ns = {{"__name__": {"'__candidate__'" if probes else "'__main__'"}}}
_buf = _io.StringIO()
try:
    with _cl.redirect_stdout(_buf):
        exec(compile({program!r}, "<candidate>", "exec"), _ns)
except BaseException as _e:
    _out.write({MARK!r} + _json.dumps({{"define": "error:" + type(_e).__name__}}) + "\\n")
    raise SystemExit(0)
_res = []
for _kind, _src, _expected in {spec!r}:
    try:
        with _cl.redirect_stdout(_io.StringIO()):
            if _kind == "assert":
                exec(_src, _ns)
                _res.append("pass")
            else:
                _v = eval(_src, _ns)
                if _expected is None:
                    _res.append("value:" + repr(_v)[:200])
                else:
                    _res.append("pass" if repr(_v) == _expected or str(_v) == _expected else "fail")
    except AssertionError:
        _res.append("fail")
    except BaseException as _e:
        _res.append("error:" + type(_e).__name__)
_out.write({MARK!r} + _json.dumps({{"probes": _res, "stdout": _buf.getvalue()[:4000]}}) + "\\n")
'''


def _report(stdout: str) -> dict | None:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        return None
    try:
        return json.loads(lines[-1][len(MARK):])
    except json.JSONDecodeError:
        return None


def _compiles(source: str, mode: str) -> bool:
    try:
        ast.parse(source, mode=mode)
        return True
    except (SyntaxError, ValueError):
        return False


def _normalise(code: str) -> str:
    return "\n".join(ln.rstrip() for ln in code.strip().splitlines() if ln.strip())
