"""The SocSci210 Arrow schema and row validation (pure: no Ray, no I/O).

Every input row is either kept or quarantined with exactly one reason from `REASONS`; prepare
checks rows_in == rows_kept + rows_quarantined. Validation works on Python values so that it
survives files whose column types drift from the published schema (a float `response`, a
string `age`, a demographic struct with a missing field).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from socrates_ray.data.prompts import AnswerScale

# The struct's fields as published (order of the Parquet struct, not of the persona block).
DEMOGRAPHIC_FIELDS: tuple[str, ...] = (
    "age",
    "gender",
    "education",
    "employment",
    "ethnicity",
    "income",
    "marital_status",
    "household_size",
    "housing_ownership",
    "housing_type",
    "location",
    "metro_status",
    "internet_access",
    "phone_service",
    "party_id",
    "ideology",
)
INT_DEMOGRAPHIC_FIELDS = frozenset({"age", "household_size"})

DEMOGRAPHIC_TYPE = pa.struct(
    [pa.field(f, pa.int64() if f in INT_DEMOGRAPHIC_FIELDS else pa.string()) for f in DEMOGRAPHIC_FIELDS]
)

RAW_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64()),
        pa.field("participant", pa.int64()),
        pa.field("demographic", DEMOGRAPHIC_TYPE),
        pa.field("stimuli", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("reasoning", pa.string()),
        pa.field("response", pa.int64()),
        pa.field("condition_num", pa.int64()),
        pa.field("task_num", pa.int64()),
        pa.field("study_id", pa.string()),
    ]
)
# `reasoning` is optional; so is `prompt`, which prepare then builds from demographic + stimuli.
REQUIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in RAW_SCHEMA if f.name not in ("reasoning", "prompt"))

# The longest prompt or stimulus prepare keeps (characters): 20 times the longest SocSci210 prompt;
# a row over it is quarantined, so one runaway cell never reaches a tokenizer or a batch.
MAX_TEXT_CHARS = 200_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# One reason per quarantined row; the summary counts each.
REASONS: dict[str, str] = {
    "missing_id": "study_id, sample_id, participant, condition_num or task_num is null or empty",
    "non_integer_id": "sample_id, participant, condition_num or task_num is not an integer",
    "duplicate_key": "(study_id, sample_id) seen before; the first occurrence is kept",
    "unknown_study": "study_id is in neither list of participant_mapping.json",
    "empty_prompt": "prompt is null or blank",
    "empty_stimuli": "stimuli is null or blank",
    "prompt_stimuli_mismatch": "prompt does not end with the row's stimuli text",
    "missing_response": "response is null",
    "non_integer_response": "response is not an integer (a fraction, text or NaN)",
    "refusal_code": "response is a refusal/don't-know code outside the bounded scale",
    "response_out_of_scale": "response lies outside the scale parsed from the stimulus",
    "missing_demographic": "demographic is null",
    "demographic_fields": "demographic has a field that is not one of SocSci210's 16 (rename it or drop it), or is not a mapping",
    "non_integer_demographic": "age or household_size is not an integer",
    "integer_out_of_range": "an id, the response, age or household_size is an integer beyond 64 bits (e.g. 1e20): no real answer or id",
    "prompt_too_long": f"prompt or stimuli is over {MAX_TEXT_CHARS:,} characters: no model reads it whole",
}


@dataclass(frozen=True)
class CleanRow:
    """A validated row in normalised Python types."""

    study_id: str
    sample_id: int
    participant: int
    condition_num: int
    task_num: int
    demographic: dict[str, Any]
    stimuli: str
    prompt: str
    response: int


def as_int(value: Any) -> int | None:
    """An exact integer from int, integral float, bool-free numeric text; None if it is not one."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if math.isfinite(number) and number.is_integer() else None
    return None


def check_demographic(demo: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(reason, normalised demographic). Fields must be among the 16 published ones; a field left out is
    null (SocSci210's own rows carry all 16, a survey of one's own often fewer), an unknown one is refused:
    it would be dropped from the prompt without a word (`Party` for `party_id`)."""
    if demo is None:
        return "missing_demographic", None
    # Other exporters: an Arrow map (a list of (key, value) pairs) or a JSON object string.
    if isinstance(demo, list) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in demo):
        demo = dict(demo)
    elif isinstance(demo, str):
        try:
            demo = json.loads(demo)
        except json.JSONDecodeError:
            return "demographic_fields", None
    if not isinstance(demo, dict):
        return "demographic_fields", None
    if not set(demo) <= set(DEMOGRAPHIC_FIELDS):
        return "demographic_fields", None
    clean: dict[str, Any] = {}
    for name in DEMOGRAPHIC_FIELDS:
        value = demo.get(name)
        if name in INT_DEMOGRAPHIC_FIELDS and value is not None:
            number = as_int(value)
            if number is None:
                return "non_integer_demographic", None
            if not INT64_MIN <= number <= INT64_MAX:
                return "integer_out_of_range", None
            value = number
        elif value is not None and not isinstance(value, str):
            value = str(value)
        clean[name] = value
    return None, clean


def validate_row(
    row: dict[str, Any],
    scale: AnswerScale | None,
    refusal_codes: frozenset[int],
) -> tuple[str | None, CleanRow | None]:
    """Check one raw row (as Python values). Returns (reason, None) or (None, CleanRow).

    `scale` is the answer scale parsed from this row's stimulus (None when the stimulus is empty).
    Key-level checks that need the whole dataset (duplicates, unknown studies) happen in prepare.
    """
    study_id = row.get("study_id")
    if study_id is None or not str(study_id).strip():
        return "missing_id", None
    ids = {}
    for name in ("sample_id", "participant", "condition_num", "task_num"):
        if row.get(name) is None:
            return "missing_id", None
        ids[name] = as_int(row[name])
        if ids[name] is None:
            return "non_integer_id", None
        if not INT64_MIN <= ids[name] <= INT64_MAX:
            return "integer_out_of_range", None

    stimuli, prompt = row.get("stimuli"), row.get("prompt")
    if prompt is None or not str(prompt).strip():
        return "empty_prompt", None
    if stimuli is None or not str(stimuli).strip():
        return "empty_stimuli", None
    if len(str(prompt)) > MAX_TEXT_CHARS or len(str(stimuli)) > MAX_TEXT_CHARS:
        return "prompt_too_long", None
    if not str(prompt).rstrip().endswith(str(stimuli).strip()):
        return "prompt_stimuli_mismatch", None

    reason, demographic = check_demographic(row.get("demographic"))
    if reason:
        return reason, None

    raw_response = row.get("response")
    if raw_response is None:
        return "missing_response", None
    response = as_int(raw_response)
    if response is None:
        return "non_integer_response", None
    if not INT64_MIN <= response <= INT64_MAX:
        return "integer_out_of_range", None
    if scale is not None and scale.bounded and not scale.low <= response <= scale.high:
        return ("refusal_code" if response in refusal_codes else "response_out_of_scale"), None

    return None, CleanRow(
        study_id=str(study_id).strip(),
        demographic=demographic,  # type: ignore[arg-type]
        stimuli=str(stimuli),
        prompt=str(prompt),
        response=response,
        **ids,  # type: ignore[arg-type]
    )
