"""The local backend on the real SmolLM2-135M (transformers, fp32 on CPU), with a few tokens per call.

One module-scoped load: the first one in a fresh models folder converts the GGUF (~20-30 s); the second
backend below reloads the converted copy, which is the warm path every later replica takes.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import torch

from escalon.answer_format import shape_prompt
from escalon.errors import ConfigError, InvalidInput
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.backends import GenerateParams, GenerateResult
from escalon.backends.local import LocalBackend, resolve_source
from servingkit import smollm_rung

pytestmark = pytest.mark.unit
PROMPT = "What is 12 times 7?"


@pytest.fixture(scope="module")
def smollm(models_dir) -> LocalBackend:
    backend = LocalBackend(smollm_rung(), models_dir=models_dir)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def smollm_completion(smollm, models_dir) -> LocalBackend:
    """The same weights as a completion rung with a tiny context, loaded from the converted copy."""
    backend = LocalBackend(smollm_rung(name="smollm-raw", prompt_format="completion", context_limit=40),
                           models_dir=models_dir)
    backend.load()
    return backend


async def test_greedy_is_deterministic_and_logprobs_are_real_distributions(smollm):
    params = GenerateParams(prompt=PROMPT, max_tokens=6, logprobs=True, top_logprobs=3)
    first, second = await smollm.generate(params), await smollm.generate(params)
    assert first.samples[0].text == second.samples[0].text and first.samples[0].text.strip()
    assert first.input_tokens == len(smollm.encode(PROMPT))  # the chat template's tokens, counted exactly
    tokens = first.samples[0].logprobs
    assert len(tokens) == first.samples[0].output_tokens == first.output_tokens == 6
    vocab = smollm.model.config.vocab_size
    for token in tokens:
        assert token.logprob <= 0
        assert token.entropy >= 0 and token.entropy <= math.log(vocab) + 1e-4
        assert 0 <= token.self_certainty <= math.log(vocab) * 3  # KL(U || p) >= 0
        assert len(token.top) == 3 and [lp for _, lp in token.top] == sorted((lp for _, lp in token.top), reverse=True)
        assert token.top[0] == (token.token, pytest.approx(token.logprob))  # greedy picks the most likely token
    assert "".join(t.token for t in tokens) == first.samples[0].text


async def test_samples_differ_at_temperature_one_and_a_seed_reproduces_them(smollm):
    params = GenerateParams(prompt=PROMPT, max_tokens=8, n=4, temperature=1.0, seed=11)
    first, again = await smollm.generate(params), await smollm.generate(params)
    other = await smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=8, n=4, temperature=1.0, seed=12))
    texts = [s.text for s in first.samples]
    assert len(texts) == 4 and len(set(texts)) > 1
    assert [s.text for s in again.samples] == texts
    assert [s.text for s in other.samples] != texts
    assert first.output_tokens == sum(s.output_tokens for s in first.samples)


async def test_stop_strings_cut_the_text_and_its_tokens(smollm):
    free = (await smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=12))).samples[0]
    stop = free.text.split()[2]  # a word the greedy answer is known to contain
    cut = (await smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=12, stop=(stop,), logprobs=True))).samples[0]
    assert cut.text == free.text[: free.text.index(stop)] and stop not in cut.text
    assert cut.finish_reason == "stop" and free.finish_reason == "length"
    assert 0 < cut.output_tokens < free.output_tokens and len(cut.logprobs) == cut.output_tokens


async def test_an_answer_type_shapes_the_prompt_caps_the_tokens_and_keeps_the_first_sample_greedy(smollm):
    number = AnswerType.ANSWER_TYPE_NUMBER
    shaped = shape_prompt(PROMPT, number, "chat", max_tokens=128)
    greedy = await smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=128, answer_type=number))
    sampled = await smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=128, n=3, temperature=1.0, seed=5,
                                                   answer_type=number))
    assert greedy.input_tokens == len(smollm.encode(shaped.prompt))  # the instruction is inside the chat template
    assert sampled.samples[0].text == greedy.samples[0].text  # sample 0 is the model's best guess, the rest sampled
    assert all(s.output_tokens <= shaped.max_tokens for s in sampled.samples)
    raw = await smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=2))
    assert raw.input_tokens == len(smollm.encode(PROMPT))  # without an answer type: the prompt as sent


async def test_streamed_pieces_add_up_to_the_final_answer(smollm):
    items = [item async for item in smollm.stream(GenerateParams(prompt=PROMPT, max_tokens=8))]
    pieces, final = items[:-1], items[-1]
    assert isinstance(final, GenerateResult) and len(pieces) > 1
    assert "".join(pieces) == final.samples[0].text


async def test_a_worked_out_answer_streams_as_one_piece_equal_to_the_final_text(smollm):
    params = GenerateParams(prompt=PROMPT, max_tokens=64, answer_type=AnswerType.ANSWER_TYPE_NUMBER)
    items = [item async for item in smollm.stream(params)]
    pieces, final = items[:-1], items[-1]
    assert pieces == [final.samples[0].text] and final.samples[0].text.endswith("= 84")  # 12 * 7, worked out


async def test_an_abandoned_stream_stops_decoding(smollm):
    stream = smollm.stream(GenerateParams(prompt=PROMPT, max_tokens=400))  # ~20 s if it ran to the end
    await anext(stream)
    await stream.aclose()
    started = time.perf_counter()
    await asyncio.wait_for(smollm.generate(GenerateParams(prompt=PROMPT, max_tokens=1)), timeout=10)
    assert time.perf_counter() - started < 3  # the lock was released: the decode loop saw the cancellation


async def test_reload_from_the_converted_copy_is_fast_and_completion_prompts_are_raw(smollm, smollm_completion):
    assert not smollm_completion.converted and smollm_completion.load_seconds < 10
    assert smollm_completion.encode(PROMPT) == smollm_completion.tokenizer(PROMPT)["input_ids"]
    assert len(smollm_completion.encode(PROMPT)) < len(smollm.encode(PROMPT))  # no chat template
    result = await smollm_completion.generate(GenerateParams(prompt="12 x 7 =", max_tokens=3))
    assert result.samples[0].output_tokens == 3 and result.samples[0].finish_reason == "length"


async def test_prompts_beyond_the_context_limit_are_rejected_by_exact_count(smollm_completion):
    with pytest.raises(InvalidInput) as err:
        await smollm_completion.generate(GenerateParams(prompt="one two three " * 20, max_tokens=4))
    assert err.value.field == "prompt" and "context limit of 40 tokens" in str(err.value)
    # A prompt that fits gets at most the room left, and says it stopped for length.
    result = await smollm_completion.generate(GenerateParams(prompt="one two three " * 12, max_tokens=64))
    assert result.input_tokens + result.samples[0].output_tokens <= 40
    assert result.samples[0].finish_reason in ("length", "stop")


async def test_health_reports_the_engine(smollm):
    assert await smollm.health() == "smollm2-135m-instruct on cpu, 1 torch thread"


def test_an_unknown_model_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a packaged model .*smollm2-135m-instruct, gemma3-270m"):
        resolve_source(smollm_rung(model="llama-9000"), tmp_path)


class _FailingEngine:
    """Stands in for a model whose device has failed (what a CUDA error looks like to the decode loop)."""

    def __init__(self, config) -> None:
        self.config = config

    def __call__(self, **_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


async def test_an_engine_failure_makes_health_raise_so_serve_replaces_the_replica(smollm, models_dir):
    broken = LocalBackend(smollm_rung(), models_dir=models_dir)
    broken.tokenizer, broken.model = smollm.tokenizer, _FailingEngine(smollm.model.config)
    await broken.health()  # loaded and not yet failed
    with pytest.raises(RuntimeError, match="illegal memory access"):
        await broken.generate(GenerateParams(prompt=PROMPT, max_tokens=2))
    with pytest.raises(RuntimeError, match="engine failed .*illegal memory access.*needs a restart"):
        await broken.health()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_a_gpu_rung_runs_on_cuda_and_agrees_with_the_cpu(smollm, models_dir):
    gpu = LocalBackend(smollm_rung(resources={"num_cpus": 1, "num_gpus": 1}), models_dir=models_dir)
    gpu.load()
    assert gpu.device == "cuda" and "on cuda" in await gpu.health()
    params = GenerateParams(prompt=PROMPT, max_tokens=4, logprobs=True)
    on_gpu, on_cpu = await gpu.generate(params), await smollm.generate(params)
    assert on_gpu.samples[0].logprobs[0].token == on_cpu.samples[0].logprobs[0].token  # bf16 vs fp32: first token


async def test_an_hf_rung_loads_a_transformers_folder_as_is(smollm, models_dir):
    """What a merged, fine-tuned student looks like to serving: a model folder, no conversion."""
    folder = models_dir / "smollm2-135m-instruct" / "hf"
    student = LocalBackend(smollm_rung(name="student", backend="hf", model=str(folder)), models_dir=models_dir)
    student.load()
    assert not student.converted
    params = GenerateParams(prompt=PROMPT, max_tokens=3)
    assert (await student.generate(params)).samples[0].text == (await smollm.generate(params)).samples[0].text
