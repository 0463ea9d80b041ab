"""What kind of answer a question expects, and the request a local rung runs for it (escalon.answer_format).
Pure functions: no model is loaded here (tests/integration/serving/test_answer_format_smollm.py runs SmolLM2)."""

import pytest

from escalon.answer_format import FORMATS, KINDS, answer_kind, shape_prompt
from escalon.gen.common.v1.common_pb2 import AnswerType

pytestmark = pytest.mark.unit
DEMO = ("Lisa and Peter are selling chocolate bars door to door. Lisa sold three and a half boxes of chocolate "
        "bars, and Peter sold four and a half boxes. They sold 64 chocolate bars together. How many chocolate bars "
        "are in a box?")


@pytest.mark.parametrize("prompt, kind", [
    ("What is 15% of 80?", "number"),
    ("What is 12 times 7?", "number"),
    (DEMO, "number"),
    ("Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus", "choice"),
    ("Is 91 a prime number?", "yes_no"),
    ("Write a Python function that reverses a string.", "code"),
    ("What is the capital of Australia?", "short"),
    ("Explain why the sky is blue.", "long"),
    ("Describe the water cycle in a paragraph.", "long"),
])
def test_the_kind_follows_the_prompt_s_shape(prompt, kind):
    assert answer_kind(prompt) == kind


def test_the_caller_s_answer_type_wins_over_the_prompt_s_shape():
    assert answer_kind("What is the capital of Australia?", AnswerType.ANSWER_TYPE_NUMBER) == "number"
    assert answer_kind("What is 12 times 7?", AnswerType.ANSWER_TYPE_FREE_TEXT) == "short"
    assert answer_kind("What is 12 times 7?", AnswerType.ANSWER_TYPE_CODE) == "code"
    with pytest.raises(ValueError, match="unknown answer type 42"):
        answer_kind("What is 12 times 7?", 42)


def test_a_number_gets_an_instruction_a_line_stop_a_small_cap_and_a_greedy_first_sample():
    chat = shape_prompt("What is 12 times 7?", AnswerType.ANSWER_TYPE_UNSPECIFIED, "chat", max_tokens=128)
    assert chat.kind == "number" and chat.greedy_first
    assert chat.prompt == "What is 12 times 7?\nAnswer with the number only."
    assert chat.stop == ("\n",) and chat.max_tokens == FORMATS["number"].max_tokens <= 32
    base = shape_prompt("What is 12 times 7?", AnswerType.ANSWER_TYPE_NUMBER, "completion", max_tokens=128)
    # a base model continues a Question/Answer frame with worked examples of the same kind
    assert base.prompt.startswith("Question: What is 3 times 4?\nAnswer: 12\n\n")
    assert base.prompt.endswith("Question: What is 12 times 7?\nAnswer:") and base.stop == ("\n",)


def test_the_caller_s_limits_and_stop_strings_are_kept():
    shaped = shape_prompt("What is 12 times 7?", AnswerType.ANSWER_TYPE_NUMBER, "chat", max_tokens=4, stop=("###",))
    assert shaped.max_tokens == 4 and shaped.stop == ("###", "\n")


def test_long_answers_keep_the_prompt_and_a_cap_that_fits_them():
    caps = {kind: FORMATS[kind].max_tokens for kind in KINDS}
    assert caps["number"] < caps["short"] < caps["long"] <= caps["code"]
    essay = shape_prompt("Explain why the sky is blue.", AnswerType.ANSWER_TYPE_UNSPECIFIED, "chat", max_tokens=1000)
    assert essay.prompt == "Explain why the sky is blue." and not essay.greedy_first
    assert essay.max_tokens == caps["long"] and "\n" not in essay.stop
