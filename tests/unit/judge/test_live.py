"""`escalon judge live` end to end on a scripted backend: questions → n samples → judges at each n →
cross-fitted calibration → live.md / live.json / reliability PNGs / calibration-live.json.

The model is replaced by a scripted backend (a mock: sampling SmolLM2 ten times per question takes minutes on
CPU; the real backend's sampling, logprobs and per-position statistics are tested in tests/unit/serving). The
script makes "easy" questions answered consistently and confidently right, the others scattered and unsure,
so the consistency judges have something true to find."""

import json
import math
import random

import pytest

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.offline.judging import live
from escalon.backends.base import GenerateResult, Sample, TokenLogprob

pytestmark = pytest.mark.unit
CHOICE = AnswerType.ANSWER_TYPE_CHOICE


def _questions(count=40):
    return [live.Question(f"q{i}", "mmlu", f"Question {i}?\nA. a\nB. b\nC. c\nD. d", "ABCD"[i % 4], CHOICE, 8)
            for i in range(count)]


class ScriptedBackend:
    def __init__(self):
        self.model = object()
        self.calls = []

    async def generate(self, params):
        self.calls.append(params)
        i = int(params.prompt.split("?")[0].split()[-1])
        gold, rng = "ABCD"[i % 4], random.Random(params.seed)
        easy = i % 2 == 0
        samples = []
        for _ in range(params.n):
            letter = gold if (easy and rng.random() < 0.85) or rng.random() < 0.25 else rng.choice("ABCD")
            lp = math.log(0.9 if easy else 0.4)
            stats = [TokenLogprob(letter, lp, entropy=0.3 if easy else 1.2, self_certainty=5.0 if easy else 2.0)]
            samples.append(Sample(f"{letter}. option", "stop", 1, stats))
        return GenerateResult(samples, input_tokens=30, output_tokens=params.n)


def test_live_reports_each_n_with_cross_fitted_calibration(tmp_path, monkeypatch):
    backend = ScriptedBackend()
    monkeypatch.setattr(live, "build_questions", lambda *a, **k: _questions())
    monkeypatch.setattr(live, "load_local_backend", lambda *a, **k: backend)
    config = live.LiveConfig(out=tmp_path, routing_data=tmp_path, judge_rung="", n_values=(1, 3, 5), timing_questions=2)
    report = live.run_live(config)
    summary = {s["n"]: s for s in report["summary"]}
    assert set(summary) == {1, 3, 5}
    assert summary[1]["consistency_raw"]["agreement"] is None  # one sample: consistency cannot run
    assert summary[5]["consistency_raw"]["agreement"]["auroc"] > 0.75  # consistent answers are the right ones
    assert summary[5]["extra_output_tokens_per_query"] == pytest.approx(4)  # (n − 1) × 1 token
    assert 0 < summary[5]["judge_cost_usd_per_query"]
    for n in (1, 3, 5):
        assert (tmp_path / f"reliability-live-n{n}.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Summary by n" in (tmp_path / "live.md").read_text()
    assert json.loads((tmp_path / "live.json").read_text())["format"] == "escalon.judge-live-report/v1"
    assert json.loads((tmp_path / "calibration-live.json").read_text())["format"] == "escalon.judge-calibration/v1"
    # every question sampled once at the largest n (the smaller n are its first samples), then a few timed
    assert sum(c.n == 5 for c in backend.calls) == 40 + 2
    calls = len(backend.calls)
    live.run_live(config)  # a re-run reads the cache
    assert len(backend.calls) == calls
