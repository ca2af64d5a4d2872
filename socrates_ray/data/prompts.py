"""Persona block, chat messages and answer-scale parsing (pure).

The prompt format is SocSci210's (the paper, Kolluri et al. EMNLP 2025, section 2):

    You are a survey respondent with the following demographic profile:
    - Age: 34
    - Gender: Female
    ...

    Read the question below and answer exactly as this person would. Follow the response instructions precisely.

    <stimuli>

Persona lines come in a fixed order, snake_case keys in Title Case, null fields left out.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

PERSONA_HEADER = "You are a survey respondent with the following demographic profile:"
INSTRUCTION = (
    "Read the question below and answer exactly as this person would. "
    "Follow the response instructions precisely."
)

# The order seen in real SocSci210 prompts. Where `ethnicity` goes is not visible in the
# published examples (it is null there); we put it after `employment`, where the Parquet
# struct has it. `socrates-ray prepare` reports how many real prompts the builder reproduces.
PERSONA_ORDER: tuple[str, ...] = (
    "age",
    "gender",
    "education",
    "employment",
    "ethnicity",
    "marital_status",
    "housing_ownership",
    "housing_type",
    "location",
    "metro_status",
    "income",
    "internet_access",
    "household_size",
    "party_id",
    "ideology",
    "phone_service",
)


def title_case(key: str) -> str:
    """`party_id` -> `Party Id` (the published prompts capitalise every word this way)."""
    return " ".join(word.capitalize() for word in key.split("_"))


def format_value(value: Any) -> str:
    """Render a demographic value as the prompts do: integers without a decimal point."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_persona_block(demographic: dict[str, Any]) -> str:
    """The header plus one `- Key: value` line per non-null field, in PERSONA_ORDER."""
    lines = [PERSONA_HEADER]
    for key in PERSONA_ORDER:
        value = demographic.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        lines.append(f"- {title_case(key)}: {format_value(value)}")
    return "\n".join(lines)


# The persona fields that hold integers (the raw schema's int64 columns), and the values they may take.
INT_PERSONA_RANGES = {"age": (0, 150), "household_size": (0, 100)}
MAX_PERSONA_TEXT = 200


def persona_problem(persona: dict[str, Any]) -> str | None:
    """Why `persona` is not a persona a prompt can be built from (a client's mistake, said so it can
    be fixed), or None. Keys are the SocSci210 field names (PERSONA_ORDER, lower case); age and
    household_size are integers in range (an integer-valued number or numeral string is taken); the
    others are short text (a number is taken as its text); null leaves a field out."""
    for key, value in persona.items():
        if key not in PERSONA_ORDER:
            near = difflib.get_close_matches(str(key).strip().lower().replace(" ", "_"), PERSONA_ORDER, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return f"unknown persona field {key!r}{hint}; the fields are {', '.join(PERSONA_ORDER)}"
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return f"persona field {key!r} must be text or a number; got {type(value).__name__}"
        if key in INT_PERSONA_RANGES:
            low, high = INT_PERSONA_RANGES[key]
            try:
                number = float(value.strip()) if isinstance(value, str) else float(value)
            except ValueError:
                return f"persona field {key!r} must be an integer from {low} to {high}; got {value!r}"
            if not (low <= number <= high) or not number.is_integer():
                return f"persona field {key!r} must be an integer from {low} to {high}; got {value!r}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"persona field {key!r} must be a finite number or text; got {value!r}"
        elif len(str(value)) > MAX_PERSONA_TEXT:
            return f"persona field {key!r} is {len(str(value))} characters long; at most {MAX_PERSONA_TEXT}"
    return None


def build_prompt(demographic: dict[str, Any], stimuli: str) -> str:
    """The full user turn: persona block, instruction line, stimulus (blank lines between)."""
    return f"{build_persona_block(demographic)}\n\n{INSTRUCTION}\n\n{stimuli}"


def build_messages(prompt: str, system_prompt: str, answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages for a prompt; with `answer`, the assistant turn that training targets."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


# ---------------------------------------------------------------------------------------------
# Answer scales
# ---------------------------------------------------------------------------------------------

ScaleKind = Literal["bounded", "open", "unknown"]


@dataclass(frozen=True)
class AnswerScale:
    """What answers a stimulus allows. bounded: integers low..high; open: any integer amount."""

    kind: ScaleKind
    low: int | None = None
    high: int | None = None
    phrasing: str = ""

    @property
    def bounded(self) -> bool:
        return self.kind == "bounded"

    @property
    def options(self) -> list[int]:
        """Every allowed answer of a bounded scale (empty otherwise)."""
        if not self.bounded:
            return []
        return list(range(self.low, self.high + 1))  # type: ignore[arg-type]


# Linear in the text, whatever it holds (a stimulus reaches the Serve app from any client): numbers
# of at most 9 digits, labels and the text between a two-option answer's parts of at most 200
# characters (an unbounded `[^.]*?` rescanned to the next period from every "return 1 for": a 216 KB
# stimulus took 49 s).
_NUM = r"(-?\d{1,9})(?!\d)"
_SPAN = 200
# A scale with more answers than this is an amount, not a set of options to score one by one
# (SocSci210's longest bounded scale has 101; "an integer from 1 to 100000000" would be 1e8 options).
MAX_SCALE_OPTIONS = 1001
_INTEGER_FROM_TO = re.compile(
    rf"\b(?:integer|number|whole number)\s+(?:from|between)\s+{_NUM}\s+(?:to|and|-)\s+{_NUM}", re.I
)
_SCALE_LABELS = re.compile(
    rf"\bscale\s+(?:from|of)\s+{_NUM}\s*\([^)]{{0,{_SPAN}}}\)\s*(?:to|-)\s*{_NUM}\s*\([^)]{{0,{_SPAN}}}\)", re.I
)
_TWO_OPTION_LABELLED = re.compile(
    rf"\b(?:return|answer|enter|respond with)\s+{_NUM}\s+(?:for|if|to indicate|=)\s+[^.]{{0,{_SPAN}}}?\bor\s+{_NUM}\s+(?:for|if|to indicate|=)\b",
    re.I,
)
_TWO_OPTION_PLAIN = re.compile(rf"\b(?:return|answer|enter|respond with)\s+(?:either\s+)?{_NUM}\s+or\s+{_NUM}\b", re.I)
_GENERIC_FROM_TO = re.compile(rf"\b(?:from|between)\s+{_NUM}\s+(?:to|and)\s+{_NUM}\b", re.I)
_FORMAT_WORDS = re.compile(r"\b(scale|rate|answer|return|respond|choose|select|enter)\b", re.I)
_OPEN = re.compile(
    r"\b(?:integer|number)\s+(?:representing|for|of)\b|\bhow many\b|\bdollars?\b|\bamount\b|\bpercent(?:age)?\b",
    re.I,
)


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text):
        pass
    return match


def _sentence_around(text: str, start: int) -> str:
    left = max(text.rfind(".", 0, start), text.rfind("\n", 0, start)) + 1
    right = text.find(".", start)
    return text[left : right if right != -1 else len(text)]


def _bounded(a: str, b: str, phrasing: str) -> AnswerScale:
    low, high = sorted((int(a), int(b)))
    if high - low + 1 > MAX_SCALE_OPTIONS:
        return AnswerScale("open", phrasing=f"{phrasing} with {high - low + 1:,} answers: an amount")
    return AnswerScale("bounded", low, high, phrasing)


CACHED_TEXT_CHARS = 4096  # stimuli longer than this are parsed each time: the cache holds <= ~16 MB of text


def parse_answer_scale(stimuli: str) -> AnswerScale:
    """Find the answer scale in a stimulus. The answer-format sentence comes last, so the last
    match of each phrasing wins (a vignette's "from 2010 to 2020" must not). Open-ended amounts
    ("Only return an integer representing dollars") and scales of more than MAX_SCALE_OPTIONS
    answers have no bounded scale."""
    return _parse_cached(stimuli) if len(stimuli) <= CACHED_TEXT_CHARS else _parse(stimuli)


@lru_cache(maxsize=4096)
def _parse_cached(stimuli: str) -> AnswerScale:
    return _parse(stimuli)


def _parse(stimuli: str) -> AnswerScale:
    for pattern, phrasing in (
        (_INTEGER_FROM_TO, "integer from A to B"),
        (_SCALE_LABELS, "scale from A (label) to B (label)"),
        (_TWO_OPTION_LABELLED, "two options"),
        (_TWO_OPTION_PLAIN, "two options"),
    ):
        match = _last(pattern, stimuli)
        if match:
            return _bounded(match.group(1), match.group(2), phrasing)
    match = _last(_GENERIC_FROM_TO, stimuli)
    if match and _FORMAT_WORDS.search(_sentence_around(stimuli, match.start())):
        return _bounded(match.group(1), match.group(2), "from A to B")
    if _OPEN.search(stimuli):
        return AnswerScale("open", phrasing="open-ended amount")
    return AnswerScale("unknown")
