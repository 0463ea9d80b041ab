"""The taxonomy's slow path (escalon.offline.labelling.labeller) on the real SmolLM2-135M, loaded by the serving backend from
the converted copy under the models folder (the first run in a fresh folder converts the GGUF, ~30 s).

The classifier is the real taxonomy head on the real static encoder, fitted on a few hand-written prompts of three
tasks. The one thing faked is a remote OpenAI-compatible provider, which cannot be reached from here: a local HTTP
server answers in the OpenAI shape, and everything on Escalon's side of it is real.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from escalon.errors import ConfigError
from escalon.registry import load_catalogue
from escalon.router.embedding import make_encoder
from escalon.offline.labelling.labeller import ExampleBank, LLMLabeller, TaskClassifier
from escalon.offline.labelling.rows import read_prompts
from escalon.offline.labelling.scorers import (
    ChannelScorer,
    LabelCard,
    LabelTokensScorer,
    make_scorer,
    read_letters,
    sequence_logprobs,
)
from escalon.router.taxonomy import Taxonomy

pytestmark = pytest.mark.unit

TRAIN = {
    "arithmetic word problem": [
        "Tom has 3 apples and buys 5 more. How many apples does he have now?",
        "A shop sells pens at $2 each. How much do 7 pens cost?",
        "Sara reads 12 pages a day. How many pages does she read in a week?",
        "A bus carries 40 people and 15 get off. How many are left on the bus?",
        "John earns $15 an hour and works 8 hours. How much does he earn?",
        "A farmer has 24 eggs and packs them in boxes of 6. How many boxes does he fill?",
    ],
    "python programming": [
        "Write a function that returns the sum of a list of integers.",
        "Implement a Python class for a stack with push and pop methods.",
        "Write a Python function to check whether a string is a palindrome.",
        "Write a function that counts the vowels in a string.",
        "Implement merge sort in Python.",
        "Write a Python function that returns the largest element of a list.",
    ],
    "trivia": [
        "Which river flows through Vienna?",
        "Who painted the Mona Lisa?",
        "What is the capital city of Australia?",
        "In which year did the Berlin Wall fall?",
        "Which planet is known as the Red Planet?",
        "Who wrote the novel Moby-Dick?",
    ],
}
CODE_QUERY = "Write a Python function that reverses a list"
SUM_QUERY = "Sara had 12 cookies and ate 4. How many cookies are left?"


@pytest.fixture(scope="module")
def smollm():
    from escalon.offline.judging.live import load_local_backend

    return load_local_backend(load_catalogue().get("smollm2-135m"), torch_threads=1)


@pytest.fixture(scope="module")
def classifier() -> TaskClassifier:
    texts = [t for items in TRAIN.values() for t in items]
    tasks = np.array([task for task, items in TRAIN.items() for _ in items])
    encoder = make_encoder("static")
    x = encoder.encode(texts)
    taxonomy = Taxonomy.fit(x, tasks, np.zeros(len(texts), dtype=int), n_domains=2)
    return TaskClassifier(taxonomy, encoder, ExampleBank(x, tasks, texts))


class Counting:
    """A real scorer that counts its calls."""

    def __init__(self, scorer) -> None:
        self.scorer, self.rung, self.calls = scorer, scorer.rung, []

    def score(self, query, cards):
        self.calls.append(query)
        return self.scorer.score(query, cards)


def test_the_real_model_labels_unsure_prompts_with_a_shortlisted_label_and_a_distribution(smollm, classifier):
    labeller = LLMLabeller(classifier, ChannelScorer(smollm), threshold=1.0, top_k=3)  # 1.0: every prompt is asked
    prompts = [CODE_QUERY, SUM_QUERY, "Name the longest river in Africa."]
    results = labeller.label(prompts)
    for result in results:
        assert result.source == "llm:smollm2-135m" and result.seconds > 0
        assert set(result.distribution) <= set(classifier.classes) and len(result.distribution) == 3
        assert sum(result.distribution.values()) == pytest.approx(1.0)
        assert all(0 <= p <= 1 for p in result.distribution.values())
        assert result.label in result.distribution
        assert result.probability == pytest.approx(max(result.distribution.values()))
        assert result.probability == pytest.approx(result.distribution[result.label])


def test_confident_queries_keep_the_classifier_label_and_never_reach_the_llm(smollm, classifier):
    seen = TRAIN["trivia"][0]  # a training prompt: the classifier is sure of it
    p = classifier.taxonomy.task_proba(classifier.embed([seen, SUM_QUERY]))
    sure, unsure = p.max(axis=1)
    assert sure > unsure
    scorer = Counting(ChannelScorer(smollm))
    results = LLMLabeller(classifier, scorer, threshold=(sure + unsure) / 2).label([seen, SUM_QUERY])
    assert scorer.calls == [SUM_QUERY]
    assert results[0].source == "classifier" and results[0].label == "trivia"
    assert results[0].probability == pytest.approx(sure)
    assert sum(results[0].distribution.values()) == pytest.approx(1.0)  # all classes
    assert results[1].source == "llm:smollm2-135m"


def test_on_an_obvious_case_the_real_model_picks_the_right_label_in_either_order(smollm):
    cards = [LabelCard("arithmetic word problem", examples=tuple(TRAIN["arithmetic word problem"][:2])),
             LabelCard("python programming", examples=tuple(TRAIN["python programming"][:2]))]
    scorer = ChannelScorer(smollm)
    for order in (cards, cards[::-1]):
        names = [c.name for c in order]
        assert names[int(np.argmax(scorer.score(CODE_QUERY, order)))] == "python programming"
        assert names[int(np.argmax(scorer.score(SUM_QUERY, order)))] == "arithmetic word problem"


def test_batched_scores_equal_one_sequence_at_a_time_and_the_label_scorer_returns_one_per_card(smollm):
    tok = smollm.tokenizer
    rows = [(tok("Queries of the task trivia:\n\nQuery:")["input_ids"], tok(" Who wrote Hamlet?")["input_ids"]),
            (tok("A much longer context about arithmetic, then:")["input_ids"], tok(" 2 + 2 = 4")["input_ids"])]
    batched = sequence_logprobs(smollm.model, rows)
    alone = [sequence_logprobs(smollm.model, [row])[0] for row in rows]
    assert batched == pytest.approx(alone, abs=1e-3) and (batched < 0).all()
    scores = LabelTokensScorer(smollm).score(CODE_QUERY, [LabelCard("math"), LabelCard("mathematics"),
                                                          LabelCard("python programming")])
    assert scores.shape == (3,) and np.isfinite(scores).all() and (scores < 0).all()


def test_letter_probabilities_follow_the_ptrue_reading_rule():
    positions = [[("The", -0.1)], [(" B", -0.5), ("(A", -1.5), ("C", -9.0), ("hmm", -3.0)]]
    p = read_letters(positions, 3)
    a, b, c = np.exp(-1.5), np.exp(-0.5), np.exp(-9.0)
    assert p == pytest.approx(np.array([a, b, c]) / (a + b + c))
    missing = read_letters([[(" A", -0.2), ("x", -4.0)]], 2)  # B not listed: bounded by the smallest listed
    assert missing == pytest.approx(np.array([np.exp(-0.2), np.exp(-4.0)]) / (np.exp(-0.2) + np.exp(-4.0)))
    assert read_letters([[("no", -0.1)]], 3) is None


class FakeProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose first token prefers the letter B."""

    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeProvider.bodies.append(body)
        top = [{"token": "B", "logprob": -0.2}, {"token": "A", "logprob": -2.0}, {"token": "The", "logprob": -3.0}]
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop",
                              "logprobs": {"content": [{"token": "B", "logprob": -0.2, "top_logprobs": top}]}}],
                 "usage": {"prompt_tokens": 50, "completion_tokens": 1}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_remote_rung_labels_by_letters_and_cannot_score_given_tokens(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeProvider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        catalogue = tmp_path / "catalogue.yaml"
        catalogue.write_text(f"""rungs:
  - name: remote
    family: openai
    backend: openai
    model: gpt-test
    base_url: http://127.0.0.1:{server.server_port}/v1
    price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
    timeout_s: 5
""")
        scorer = make_scorer("remote", catalogue=catalogue)
        cards = [LabelCard("arithmetic word problem"), LabelCard("python programming"), LabelCard("trivia")]
        p = np.exp(scorer.score(CODE_QUERY, cards))
        assert int(np.argmax(p)) == 1 and p.sum() == pytest.approx(1.0)
        body = FakeProvider.bodies[-1]
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["temperature"] == 0.0
        assert "(B) python programming" in body["messages"][0]["content"]
        with pytest.raises(ConfigError, match="cannot score given tokens"):
            make_scorer("remote", mode="channel", catalogue=catalogue)
    finally:
        server.shutdown()


def test_replay_and_unknown_rungs_cannot_label():
    with pytest.raises(ConfigError, match="replays recorded answers"):
        make_scorer("gpt-4")
    with pytest.raises(ConfigError, match="unknown labeller rung 'nope'.*smollm2-135m"):
        make_scorer("nope")


def test_bad_input_files_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="no input file"):
        read_prompts(tmp_path / "missing.jsonl")
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "hello", "id": 1}\n')
    with pytest.raises(ConfigError, match="no 'prompt' column \\(it has: id, text\\).*--column"):
        read_prompts(other)
    assert read_prompts(other, column="text")[0]["id"] == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "fine"}\n{"prompt": "  "}\n{"prompt": null}\n')
    with pytest.raises(ConfigError, match="row\\(s\\) 2, 3 have an empty or non-text 'prompt'"):
        read_prompts(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        read_prompts(broken)
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt\nhello\n")
    with pytest.raises(ConfigError, match="neither .jsonl nor .parquet"):
        read_prompts(csv)
    parquet = tmp_path / "p.parquet"
    pd.DataFrame({"question": ["a"]}).to_parquet(parquet)
    with pytest.raises(ConfigError, match="no 'prompt' column \\(it has: question\\)"):
        read_prompts(parquet)


def _benchmark(path):
    rows = [{"prompt_id": f"{task}-{i}", "task": task, "split": "train", "prompt": text, "model": "m",
             "response": None, "score": float(i % 2), "cost_usd": 0.001}
            for task, items in TRAIN.items() for i, text in enumerate(items)]
    rows.append({**rows[0], "prompt_id": "held", "split": "test"})
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_the_cli_labels_a_file_and_reports_errors_clearly(tmp_path, capsys, monkeypatch):
    from escalon.cli import main

    monkeypatch.delenv("ESCALON_ROUTER_ARTEFACT", raising=False)
    bench = _benchmark(tmp_path / "benchmark.parquet")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"prompt": CODE_QUERY, "id": 7, "task": "python programming"}) + "\n"
                       + json.dumps({"prompt": "Name the longest river in Africa.", "id": 8, "task": "trivia"}) + "\n")
    out = tmp_path / "labelled.jsonl"
    common = ["taxonomy", "label", "--benchmark", str(bench), "--encoder", "static", "--cache-dir",
              str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as code:
        main([*common, "--in", str(queries), "--out", str(out), "--labeller", "smollm2-135m", "--threads", "1",
              "--threshold", "0.9", "--gold-column", "task"])
    assert code.value.code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [7, 8] and all(r["label"] in TRAIN for r in rows)
    # p_fast is ~0.94 for the code query and ~0.73 for the river: only the second is asked
    assert [r["source"] for r in rows] == ["classifier", "llm:smollm2-135m"]
    assert len(rows[0]["distribution"]) == 3 and rows[0]["label"] == "python programming"
    assert all(sum(r["distribution"].values()) == pytest.approx(1.0, abs=1e-4) for r in rows)
    assert "agreement with task:" in capsys.readouterr().out

    with pytest.raises(SystemExit) as code:
        main([*common, "--in", str(tmp_path / "nope.jsonl"), "--out", str(out), "--labeller", "none"])
    assert code.value.code == 2
    assert "escalon taxonomy label: in: no input file at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as code:
        main(["taxonomy", "label", "--in", str(queries), "--out", str(out), "--labeller", "none"])
    assert code.value.code == 2
    assert "give --benchmark" in capsys.readouterr().err
