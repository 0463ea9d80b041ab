import pytest

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.answers import infer_answer_type, parse_answer

pytestmark = pytest.mark.unit

NUMBER, CHOICE, YES_NO, FREE, CODE = (AnswerType.ANSWER_TYPE_NUMBER, AnswerType.ANSWER_TYPE_CHOICE,
                                      AnswerType.ANSWER_TYPE_YES_NO, AnswerType.ANSWER_TYPE_FREE_TEXT,
                                      AnswerType.ANSWER_TYPE_CODE)


@pytest.mark.parametrize("text, expected", [
    ("She sells 9 eggs for 9 * $2 = $18.", "18"),
    ("so 1,234.50 dollars", "1234.5"),
    ("The answer is 8.00", "8"),
    ("#### 42\nThat took 3 steps", "42"),
    ("-3 degrees", "-3"),
    ("no digits here", None),
])
def test_numbers_take_the_final_number_canonically(text, expected):
    assert parse_answer(text, NUMBER) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is (C).", "C"),
    ("B. Paris is the capital", "B"),
    ("Answer: d", "D"),
    ("I think it's (A) but maybe (B)", "B"),
    ("none of these", None),
])
def test_choices_find_the_letter(text, expected):
    assert parse_answer(text, CHOICE) == expected


def test_yes_no_and_free_text_and_code():
    assert parse_answer("True, because ...", YES_NO) == "yes"
    assert parse_answer("No.", YES_NO) == "no"
    assert parse_answer("maybe", YES_NO) is None
    assert parse_answer("  The Eiffel Tower!\nmore text", FREE) == "eiffel tower"
    assert parse_answer("```python\ndef f():  \n\n    return 1\n```", CODE) == "def f():\n    return 1"


def test_answer_type_is_inferred_from_the_prompt_shape():
    assert infer_answer_type("Which?\nA. one\nB. two\nC. three") == CHOICE
    assert infer_answer_type("How many apples are left if I had 5 and ate 2?") == NUMBER
    assert infer_answer_type("Is Paris in France?") == YES_NO
    assert infer_answer_type("Write a Python function that adds two numbers") == CODE
    assert infer_answer_type("Who wrote Hamlet?") == FREE
