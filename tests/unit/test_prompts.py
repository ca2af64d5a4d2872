import pytest

from socrates_ray.data.prompts import (
    AnswerScale,
    build_messages,
    build_persona_block,
    build_prompt,
    parse_answer_scale,
    title_case,
)
from socrates_ray.data.schema import DEMOGRAPHIC_FIELDS

# A real-format SocSci210 row (the paper, Kolluri et al. EMNLP 2025, section 2): `ethnicity` is null, so no line for it.
REAL_DEMOGRAPHIC = {
    "age": 34,
    "gender": "Female",
    "education": "Post grad study/professional degree",
    "employment": "Employed as paid employee",
    "ethnicity": None,
    "income": "75-99K",
    "marital_status": "Married",
    "household_size": 4,
    "housing_ownership": "Owned or being bought by you or someone in your household",
    "housing_type": "A building with 2 or more apartments",
    "location": "New Jersey",
    "metro_status": "Metro Area",
    "internet_access": "Internet Household",
    "phone_service": "Cellphone only",
    "party_id": "Moderate Democrat",
    "ideology": "Moderate",
}
REAL_STIMULI = (
    'You read "Jaime is 20 years old and was born a girl, and now identifies as non-binary."\n\n'
    "How much do you agree that Jaime should be able to change the gender on a driver's license? "
    "Only return an integer from 1 to 7, where 1 means Strongly disagree and 7 means Strongly agree, nothing else."
)
REAL_PROMPT = (
    "You are a survey respondent with the following demographic profile:\n"
    "- Age: 34\n"
    "- Gender: Female\n"
    "- Education: Post grad study/professional degree\n"
    "- Employment: Employed as paid employee\n"
    "- Marital Status: Married\n"
    "- Housing Ownership: Owned or being bought by you or someone in your household\n"
    "- Housing Type: A building with 2 or more apartments\n"
    "- Location: New Jersey\n"
    "- Metro Status: Metro Area\n"
    "- Income: 75-99K\n"
    "- Internet Access: Internet Household\n"
    "- Household Size: 4\n"
    "- Party Id: Moderate Democrat\n"
    "- Ideology: Moderate\n"
    "- Phone Service: Cellphone only\n"
    "\n"
    "Read the question below and answer exactly as this person would. Follow the response instructions precisely.\n"
    "\n" + REAL_STIMULI
)


def test_builder_reproduces_real_prompt_byte_for_byte():
    assert set(REAL_DEMOGRAPHIC) == set(DEMOGRAPHIC_FIELDS)
    assert build_prompt(REAL_DEMOGRAPHIC, REAL_STIMULI) == REAL_PROMPT


def test_builder_is_independent_of_dict_order_and_float_ages():
    shuffled = dict(reversed(list(REAL_DEMOGRAPHIC.items())))
    shuffled["age"] = 34.0  # a float column in someone's export
    assert build_prompt(shuffled, REAL_STIMULI) == REAL_PROMPT


def test_null_and_blank_fields_are_left_out():
    block = build_persona_block({"age": 50, "gender": None, "income": "  ", "party_id": "Strong Republican"})
    assert block.splitlines() == [
        "You are a survey respondent with the following demographic profile:",
        "- Age: 50",
        "- Party Id: Strong Republican",
    ]


def test_title_case_keys():
    assert title_case("party_id") == "Party Id"
    assert title_case("housing_ownership") == "Housing Ownership"


def test_messages_carry_system_prompt_and_answer():
    msgs = build_messages("P", "SYS", "5")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "SYS" and msgs[2]["content"] == "5"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("... Only return an integer from 1 to 7, where 1 means Extremely unlikely and 7 means Extremely likely, nothing else.", (1, 7, "integer from A to B")),
        ("How extreme? On a scale from 1 (Not at all extreme) to 5 (Very extreme), only return the number.", (1, 5, "scale from A (label) to B (label)")),
        ("Would you vote for it? Only return 1 if Yes or 2 if No, nothing else.", (1, 2, "two options")),
        ("Would you sign? Only return 1 for Yes or 0 for No.", (0, 1, "two options")),
        ("Did you? Answer 0 or 1, where 1 means Yes and 0 means No.", (0, 1, "two options")),
        ("Only return an integer from 0 to 100, where 0 means none and 100 means all, nothing else.", (0, 100, "integer from A to B")),
        ("Only return an integer from 0 to 20, nothing else.", (0, 20, "integer from A to B")),
        ("Only return an integer from -5 to 5, where -5 means very cold and 5 means very warm.", (-5, 5, "integer from A to B")),
        ("Please rate the candidate on a scale from 1 to 10.", (1, 10, "from A to B")),
    ],
)
def test_bounded_scales(text, expected):
    scale = parse_answer_scale(text)
    assert (scale.kind, scale.low, scale.high, scale.phrasing) == ("bounded", *expected)
    assert scale.options == list(range(expected[0], expected[1] + 1))


def test_vignette_numbers_do_not_make_a_scale():
    scale = parse_answer_scale("Prices rose from 2010 to 2020 in this town. How many dollars would you pay? Only return an integer representing dollars, nothing else.")
    assert scale == AnswerScale("open", phrasing="open-ended amount")
    assert not scale.bounded and scale.options == []


def test_last_format_sentence_wins():
    text = "An earlier study used an integer from 1 to 5. Only return an integer from 1 to 7, nothing else."
    assert (parse_answer_scale(text).low, parse_answer_scale(text).high) == (1, 7)


def test_unknown_scale():
    assert parse_answer_scale("Tell us what you think.").kind == "unknown"


def test_a_scale_of_more_than_max_scale_options_answers_is_an_amount_never_a_list_of_them():
    from socrates_ray.data.prompts import MAX_SCALE_OPTIONS

    huge = parse_answer_scale("Only return an integer from 1 to 100000000, nothing else.")
    assert huge.kind == "open" and huge.options == [] and "100,000,000 answers" in huge.phrasing
    widest = parse_answer_scale(f"Only return an integer from 0 to {MAX_SCALE_OPTIONS - 1}, nothing else.")
    assert widest.bounded and len(widest.options) == MAX_SCALE_OPTIONS
    # more digits than any scale has (int() of 5,000 digits raises in Python 3.11): no scale, no error
    assert parse_answer_scale("Only return an integer from 1 to " + "9" * 5000 + ", nothing else.").kind == "unknown"


def test_hostile_stimuli_parse_in_one_pass_with_the_same_answers():
    # Before: "return 1 for" repeated without a period rescanned the rest of the text from each
    # repeat (72 KB: 2.4 s; the 216 KB a client sent to the Serve app stalled a replica 49 s).
    flood = "Please return 1 for yes " * 15_000  # 360 KB
    assert parse_answer_scale(flood).kind == "unknown"
    assert parse_answer_scale("On a scale from 1 (" + "x" * 300_000).kind == "unknown"
    tail = " Only return 1 if Yes or 2 if No, nothing else."
    assert (parse_answer_scale(flood + tail).low, parse_answer_scale(flood + tail).high) == (1, 2)
    long_text = "A vignette. " * 1000 + "Only return an integer from 1 to 7, nothing else."  # past the cache's size cut
    assert parse_answer_scale(long_text).options == list(range(1, 8))
