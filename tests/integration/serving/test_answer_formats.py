"""A README example answered right by the real SmolLM2-135M through the serving front (in process, real stubs):
asked for a number (GenerateRequest.answer_type), the rung writes the calculation in a few tokens, stops at the
line's end, and the calculation is worked out (escalon.answer_format). Nothing is mocked; greedy decoding, so the
answer is the model's own best guess every run (~2-4 s of decoding on a loaded 2-core machine)."""

from __future__ import annotations

import grpc
import pytest

from escalon.answer_format import FORMATS
from escalon.answers import parse_number
from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.serving.v1 import serving_pb2, serving_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("prompt, answer", [("What is 12 times 7?", "84"), ("What is 15% of 80?", "12")])
async def test_smollm2_answers_a_readme_arithmetic_example_with_the_number_format(inprocess_front, prompt, answer):
    async with grpc.aio.insecure_channel(inprocess_front.address) as channel:
        stub = serving_pb2_grpc.ModelServingServiceStub(channel)
        reply = await stub.Generate(serving_pb2.GenerateRequest(
            rung="smollm2-135m", prompt=prompt, max_tokens=64, answer_type=AnswerType.ANSWER_TYPE_NUMBER), timeout=120)
    sample = reply.samples[0]
    assert parse_number(sample.text) == answer, sample.text
    assert sample.finish_reason == "stop" and sample.output_tokens <= FORMATS["number"].max_tokens
