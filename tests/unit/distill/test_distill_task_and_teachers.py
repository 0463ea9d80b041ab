"""The pieces under the distillation jobs, without a model: the checkable arithmetic task and its programmatic
teacher, the program sandbox, answer checking, the replay teacher's refine fallbacks, the promoted-rungs
overlay, and the harvest job's three sources."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from escalon.distill.jobs import LocalContext, validate
from escalon.distill.training import arith
from escalon.distill.training.data import Item, final_answer, is_correct, read_items
from escalon.distill.training.sandbox import SandboxError, run_program
from escalon.distill.training.teachers import ArithTeacher, RungTeacher, restructure
from escalon.errors import InvalidInput
from escalon.registry import Catalogue, LiveCatalogue, Rung, load_catalogue, promoted_path, register_promoted

pytestmark = pytest.mark.unit
DEMO = Path(__file__).resolve().parents[3] / "shared" / "escalon" / "demo" / "gsm8k-sample.parquet"


def test_every_teacher_solution_is_correct_in_every_strategy() -> None:
    for raw in arith.generate(60, seed=7):
        item = Item.from_dict(raw)
        for strategy in ("cot", "l2m", "pot"):
            text = ArithTeacher().solve(item, strategy).text
            assert is_correct(f"[{strategy}]: {text}", item), (strategy, text)
        assert is_correct(ArithTeacher().solve(item).text, item)


def test_problems_are_distinct_and_reproducible() -> None:
    a, b = arith.generate(50, seed=1), arith.generate(50, seed=1)
    assert a == b and len({x["prompt"] for x in a}) == 50
    assert {x["meta"]["arith"]["template"] for x in a} == set(arith.TEMPLATES)


@pytest.mark.parametrize("student, kind", [
    ("There are 3 bags: 3 x 18 = 44. 18 + 44 = 62. #### 62", "arithmetic"),
    ("3 x 18 = 54. #### 54", "early_stop"),
    ("I do not know", "format"),
    ("3 + 18 = 21. 18 + 21 = 39. #### 39", "operation"),
])
def test_the_teacher_diagnoses_the_error_and_explains_that_step_again(student: str, kind: str) -> None:
    spec = {"template": "bags", "who": "Leo", "thing": "cards", "a": 18, "b": 3, "c": 18}
    item = Item("x", arith.problem(spec)[0], "72", meta={"arith": spec})
    diagnosis = arith.diagnose(spec, student, final_answer(student))
    assert diagnosis.kind == kind
    refined = ArithTeacher().refine(item, [arith.solve(spec)], student, 0.0, [])
    assert is_correct(refined.text, item) and refined.source == f"program:{kind}"
    assert refined.text != arith.solve(spec)  # a different explanation, aimed at the mistake
    if kind == "arithmetic":
        assert "18 x 3 = 10 x 3 + 8 x 3 = 30 + 24 = 54" in refined.text
    if kind == "early_stop":
        assert "54 is not the answer yet" in refined.text


def test_the_sandbox_runs_arithmetic_and_refuses_everything_else() -> None:
    assert run_program("a = 3 * 14\nb = 7 + a\nprint(b)") == "49"
    assert run_program("t = 0\nfor i in range(4):\n    t += i\nanswer = t") == "6"
    for hostile in ("import os", "__import__('os').system('true')", "open('/etc/passwd')", "(1).__class__",
                    "while True:\n    pass", "x = 9 ** 99999", "def f():\n    return 1", "[].append(1)"):
        with pytest.raises(SandboxError):
            run_program(hostile)


def test_answers_are_read_as_the_judges_read_them() -> None:
    item = Item("x", "q", "1234")
    assert is_correct("so 1,234 in all. #### 1,234", item)
    assert is_correct("[pot]: n = 1000 + 234\nprint(n)", item)
    assert not is_correct("[pot]: import os", item)
    assert not is_correct("[l2m]: Q1 ... #### 1233", item)


def _replay_catalogue(tmp_path: Path) -> tuple[Catalogue, Item]:
    frame = pd.read_parquet(DEMO)
    gpt4 = frame[frame.model == "gpt-4-1106-preview"]
    both = frame.pivot_table(index="prompt_id", columns="model", values="score")
    pid = both[(both["gpt-4-1106-preview"] == 1) & (both["mistralai/Mixtral-8x7B-Instruct-v0.1"] == 1)].index[0]
    row = gpt4[gpt4.prompt_id == pid].iloc[0]
    item = Item(pid, row.prompt, final_answer(row.response))
    default = load_catalogue()
    return Catalogue(rungs=[default.get("gpt-4"), default.get("mixtral-8x7b")]), item


def test_a_replay_teacher_refines_with_another_recorded_model_then_by_restructuring(tmp_path: Path) -> None:
    catalogue, item = _replay_catalogue(tmp_path)
    teacher = RungTeacher(catalogue.get("gpt-4"), models_dir=tmp_path, catalogue=catalogue,
                          alternates=["mixtral-8x7b"])
    try:
        own = teacher.solve(item)
        assert own.source == "teacher" and own.cost_usd > 0 and is_correct(own.text, item)
        alt = teacher.refine(item, [own.text], "#### 0", 0.0, [])
        assert alt.source == "alternate:mixtral-8x7b" and is_correct(alt.text, item) and alt.text != own.text
        fallback = teacher.refine(item, [own.text, alt.text], "#### 0", 0.0, [])  # nothing new recorded
        assert fallback.source == "restructured" and fallback.calls == 0
        assert fallback.text.startswith("Step 1:") and is_correct(fallback.text, item)
    finally:
        teacher.close()
    assert restructure("A is 2. B is 3.\n#### 5", Item("y", "q", "5")) == "Step 1: A is 2.\nStep 2: B is 3.\n#### 5"


def test_promoted_rungs_join_the_live_catalogue_without_replacing_configured_ones(tmp_path: Path) -> None:
    base = load_catalogue()
    path = promoted_path(tmp_path)
    live = LiveCatalogue(base, path, check_interval_s=0)
    assert live.current() is base
    spec = base.get("smollm2-135m").model_dump()
    register_promoted(path, Rung.model_validate({**spec, "name": "student-a", "backend": "hf", "model": "/m/a"}))
    register_promoted(path, Rung.model_validate({**spec, "name": "gpt-4", "backend": "hf", "model": "/m/b"}))
    register_promoted(path, Rung.model_validate({**spec, "name": "student-a", "backend": "hf", "model": "/m/c"}))
    current = live.current()
    assert current.names == [*base.names, "student-a"] and current.get("student-a").model == "/m/c"
    assert current.get("gpt-4").backend == "replay"  # a configured rung wins
    path.write_text("rungs: [{name: 'BAD NAME'}]")
    assert live.current().names == current.names  # a broken overlay keeps the last good one


def test_harvest_from_a_benchmark_derives_gold_from_correct_recorded_answers(tmp_path: Path) -> None:
    kind, params = validate("harvest", {"source": "benchmark", "path": str(DEMO), "val_fraction": 0.3}, tmp_path)
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "h"))
    items = read_items(result["artefacts"]["dataset"])
    frame = pd.read_parquet(DEMO)
    solved = frame[frame.score == 1].prompt_id.nunique()
    assert result["items"] == len(items) == solved
    assert result["dropped"] == {"no correct recorded answer": frame.prompt_id.nunique() - solved}
    test_ids = set(frame[frame.split == "test"].prompt_id)
    assert all((i.split == "test") == (i.id in test_ids) for i in items)
    for item in items:  # the gold is a correct recorded answer's final number
        rows = frame[(frame.prompt_id == item.id) & (frame.score == 1)]
        assert item.answer in {final_answer(r) for r in rows.response}


def test_harvest_from_router_logs_keeps_queries_a_cheap_rung_failed_and_a_dear_one_answered(tmp_path: Path) -> None:
    def route(prompt: str, cheap_ok: bool, dear_conf: float, camel: bool = False) -> str:
        key = "parsedAnswer" if camel else "parsed_answer"
        return json.dumps({"prompt": prompt, "answerType": "ANSWER_TYPE_NUMBER", "attempts": [
            {"rung": "smollm2-135m", "answer": "7", key: "7", "confidence": 0.3, "accepted": cheap_ok},
            {"rung": "gpt-4", "answer": "so 8", key: "8", "confidence": dear_conf, "accepted": dear_conf >= 0.7}]})

    log = tmp_path / "routes.jsonl"
    log.write_text("\n".join([
        route("How many boxes? 64 bars", False, 0.95),
        route("How  many boxes?  64 bars", False, 0.95, camel=True),  # a duplicate after normalisation
        route("Cheap was right", True, 0.95),
        route("Dear was unsure", False, 0.75),
        "not json",
    ]) + "\n")
    kind, params = validate("harvest", {"source": "router_log", "path": "routes.jsonl", "min_confidence": 0.9},
                            tmp_path)
    result = kind.run(params, LocalContext(artefact_dir=tmp_path / "h"))
    [item] = read_items(result["artefacts"]["dataset"])
    assert item.answer == "8" and item.meta["failed_rung"] == "smollm2-135m" and item.meta["label_rung"] == "gpt-4"
    assert result["dropped"] == {"duplicate": 1, "no cheap rung failed": 1, "unreadable line": 1,
                                 "no costlier rung answered with enough confidence": 1}


def test_distillation_params_are_checked_at_submit(tmp_path: Path, arith_data: Path) -> None:
    base = {"teacher": "program:arith", "student": "smollm2-135m", "data": str(arith_data)}
    kind, params = validate("undo", base, tmp_path)
    assert params.data_dir == str(tmp_path.resolve()) and params.models_dir
    for bad, field in (({"student": "gpt-4"}, "params.student"), ({"teacher": "gpt-9"}, "params.teacher"),
                       ({"data": "missing.jsonl"}, "params.data"), ({"rounds": 9}, "params.rounds"),
                       ({"teacher": "program:chess"}, "params.teacher")):
        with pytest.raises(InvalidInput) as err:
            validate("undo", {**base, **bad}, tmp_path)
        assert err.value.field == field
    with pytest.raises(InvalidInput) as err:
        validate("siked", {**base, "strategies": ["cot", "guess"]}, tmp_path)
    assert err.value.field == "params.strategies"


def test_a_cancelled_undo_job_stops_at_its_next_checkpoint(
        tmp_path: Path, arith_data: Path) -> None:
    kind, params = validate("undo", {"teacher": "program:arith", "student": "smollm2-135m", "data": str(arith_data),
                                     "teacher_chunk": 3, "limit_train": 9}, tmp_path)
    ctx = LocalContext(artefact_dir=tmp_path / "job", cancel_requested=True)
    from escalon.distill.jobs import JobCancelled

    with pytest.raises(JobCancelled):
        kind.run(params, ctx)
    assert len(ctx.checkpoints) == 1 and ctx.checkpoint["teacher_done"] == 3 and ctx.checkpoint["phase"] == "teacher"
    from escalon.distill.training.data import read_jsonl

    assert len(read_jsonl(tmp_path / "job" / "teacher.jsonl")) == 3


class _FakeProvider:
    """An OpenAI-compatible endpoint on 127.0.0.1 (a remote provider cannot be reached from here: the one thing
    mocked). It answers every chat completion with a fixed rationale and records the prompts it got."""

    def __init__(self, answer: str) -> None:
        import http.server
        import threading

        prompts = self.prompts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompts.append(body["messages"][-1]["content"])
                payload = json.dumps({"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_openai_compatible_teacher_gets_the_refine_prompt_and_an_outage_is_transient(tmp_path: Path) -> None:
    import socket

    from escalon.distill.jobs import TransientJobError

    spec = {"template": "bags", "who": "Leo", "thing": "cards", "a": 18, "b": 3, "c": 18}
    item = Item("x", arith.problem(spec)[0], "72", meta={"arith": spec})
    provider = _FakeProvider("3 x 18 = 54. 18 + 54 = 72. #### 72")
    rung = Rung(name="remote", family="openai", backend="openai", model="gpt-test", base_url=provider.base_url,
                price={"input_per_1m": 1.0, "output_per_1m": 2.0}, timeout_s=5)
    teacher = RungTeacher(rung, models_dir=tmp_path, catalogue=Catalogue(rungs=[rung]))
    try:
        solved = teacher.solve(item)
        assert is_correct(solved.text, item) and solved.cost_usd == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
        refined = teacher.refine(item, [solved.text], "3 + 18 = 21. #### 39", 0.0, [("other question", "#### 5")])
        assert refined.source == "teacher" and is_correct(refined.text, item)
        refine_prompt = provider.prompts[-1]
        assert item.prompt in refine_prompt and "#### 39" in refine_prompt and solved.text in refine_prompt
        assert "other question" in refine_prompt  # similar validation errors are shown too
    finally:
        teacher.close()
        provider.close()

    with socket.socket() as s:  # a port nobody listens on: the endpoint is down
        s.bind(("127.0.0.1", 0))
        down = rung.model_copy(update={"base_url": f"http://127.0.0.1:{s.getsockname()[1]}/v1"})
    teacher = RungTeacher(down, models_dir=tmp_path, catalogue=Catalogue(rungs=[down]))
    try:
        with pytest.raises(TransientJobError, match="teacher remote unavailable"):  # retried, not failed
            teacher.solve(item)
    finally:
        teacher.close()
