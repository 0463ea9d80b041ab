"""What kind of answer a question expects, and the request a local rung runs for it (escalon.answer_format).
Pure functions: no model is loaded here (tests/integration/serving/test_answer_format_smollm.py runs SmolLM2)."""

import pytest

from escalon.answer_format import FORMATS, KINDS, answer_kind, calculated, shape_prompt
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
    assert chat.prompt == f"What is 12 times 7?\n{FORMATS['number'].instruction}" and "expression" in chat.prompt
    assert chat.stop == ("\n",) and chat.max_tokens == FORMATS["number"].max_tokens <= 32
    base = shape_prompt("What is 12 times 7?", AnswerType.ANSWER_TYPE_NUMBER, "completion", max_tokens=128)
    # a base model continues a Question/Answer frame with worked examples of the same kind
    assert base.prompt.startswith("Question: What is 3 times 4?\nCalculation: 3 * 4\n\n")
    assert base.prompt.endswith("Question: What is 12 times 7?\nCalculation:") and base.stop == ("\n",)


def test_the_caller_s_limits_and_stop_strings_are_kept():
    shaped = shape_prompt("What is 12 times 7?", AnswerType.ANSWER_TYPE_NUMBER, "chat", max_tokens=4, stop=("###",))
    assert shaped.max_tokens == 4 and shaped.stop == ("###", "\n")


def test_long_answers_keep_the_prompt_and_a_cap_that_fits_them():
    caps = {kind: FORMATS[kind].max_tokens for kind in KINDS}
    assert caps["number"] <= caps["short"] < caps["long"] <= caps["code"]
    essay = shape_prompt("Explain why the sky is blue.", AnswerType.ANSWER_TYPE_UNSPECIFIED, "chat", max_tokens=1000)
    assert essay.prompt == "Explain why the sky is blue." and not essay.greedy_first
    assert essay.max_tokens == caps["long"] and "\n" not in essay.stop


@pytest.mark.parametrize("text, answer", [
    ("12 * 7 = 88", "12 * 7 = 84"),  # the model sets it up right and multiplies wrong: the sum is redone
    ("15% of 80 is 0.15 * 80 = 1.15 * 80 = 92", "0.15 * 80 = 12"),  # a chain is read at its first calculation
    ("3 * 4 = 12 apples. Then 12 + 5 = 18.", "12 + 5 = 17"),  # the last chain is the final step
    ("15% * 80", "(15 / 100) * 80 = 12"),
    ("What is 15% of 80", "(15 / 100) * 80 = 12"),
    ("64 / (3.5 + 4.5)", "64 / (3.5 + 4.5) = 8"),
    ("1,000 * 3", "1000 * 3 = 3000"),
    ("0.1 * 3", "0.1 * 3 = 0.3"),  # exact arithmetic, not 0.30000000000000004
    ("10 / 3", "10 / 3 = 3.333333"),
])
def test_a_calculation_is_worked_out_exactly(text, answer):
    assert calculated(text) == answer


@pytest.mark.parametrize("text", ["100 divided by 4 equals 25.", "2 ** 1000", "5 / 0", "__import__('os') + 1",
                                  "50% of the 30 apples", ""])
def test_text_without_a_calculation_it_can_work_out_is_left_as_it_is(text):
    assert calculated(text) == text


def test_only_a_calculated_kind_rewrites_its_samples():
    number = shape_prompt("What is 12 times 7?", AnswerType.ANSWER_TYPE_UNSPECIFIED, "chat", max_tokens=64)
    short = shape_prompt("Who wrote Hamlet?", AnswerType.ANSWER_TYPE_UNSPECIFIED, "chat", max_tokens=64)
    assert number.calculate and number.finish("12 * 7 = 88") == ("12 * 7 = 84", "stop")
    assert not short.calculate and short.finish("1 + 1 = 3", "length") == ("1 + 1 = 3", "length")


def test_a_calculation_written_before_the_token_limit_is_a_complete_answer_one_cut_by_it_is_not():
    number = shape_prompt("What is 15% of 80?", AnswerType.ANSWER_TYPE_NUMBER, "chat", max_tokens=64)
    ran_on = "15% of 80 is 0.15 * 80 = 1.15 * 80 = 92 because the percentage of a number is"
    assert number.finish(ran_on, "length") == ("0.15 * 80 = 12", "stop")
    assert number.finish("0.15 * 80 = 1.15 * 80 = 9.2", "length") == ("0.15 * 80 = 12", "stop")  # closed by "="
    cut = "15% of 80 is 0.15 * 8"
    assert number.finish(cut, "length") == (cut, "length")  # the limit may have cut the sum itself: no answer


def test_the_router_resolves_a_query_s_type_once_never_to_unspecified():
    from escalon.answer_format import expected_answer_type

    assert expected_answer_type("What is 12 times 7?") == AnswerType.ANSWER_TYPE_NUMBER
    assert expected_answer_type(DEMO) == AnswerType.ANSWER_TYPE_NUMBER  # "how many", figures in words
    assert expected_answer_type("Explain why the sky is blue.") == AnswerType.ANSWER_TYPE_FREE_TEXT
    assert expected_answer_type("What is 12 times 7?", AnswerType.ANSWER_TYPE_CODE) == AnswerType.ANSWER_TYPE_CODE
