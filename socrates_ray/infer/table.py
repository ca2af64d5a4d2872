"""Personas x stimuli -> answer distributions, in this process: the notebook path (`socrates_ray.predict`).

A researcher holds a DataFrame of personas (one column per SocSci210 demographic field they know:
`age`, `party_id`, ...) and a few stimuli (vignette + question + the answer-format sentence, as the
prompts of SocSci210 end). `persona_grid` crosses them; `predict_table` builds each row's prompt
exactly as prepare does (persona block, instruction, stimulus), scores every option of the stimulus's
answer scale with the engine (exact distributions, no sampling noise) and returns one row per
(persona, stimulus) with the options, their probabilities and the mean answer.
For whole splits and studies use `simulate` (Ray Data, resumable) instead.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from socrates_ray.data.prompts import build_prompt, parse_answer_scale
from socrates_ray.data.schema import DEMOGRAPHIC_FIELDS, REASONS, check_demographic
from socrates_ray.infer.engine import InferenceEngine, ScoreError, distributions

STIMULUS = "stimulus"  # the stimulus text column of a table
STIMULUS_NAME = "stimulus_name"  # its short name, when the stimuli came as a mapping


def persona_columns(table: pd.DataFrame) -> list[str]:
    """The demographic columns of a table, in the table's order; any other column but the stimulus
    ones is refused with the nearest field name (a misspelled `Party` would silently drop the party)."""
    unknown = [c for c in table.columns if c not in DEMOGRAPHIC_FIELDS and c not in (STIMULUS, STIMULUS_NAME)]
    if unknown:
        hints = []
        for c in unknown:
            close = difflib.get_close_matches(str(c).lower(), DEMOGRAPHIC_FIELDS, n=1, cutoff=0.6)
            hints.append(f"{c!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ScoreError(f"persona columns must be SocSci210 demographic fields ({', '.join(DEMOGRAPHIC_FIELDS)}); "
                         f"got {', '.join(hints)}: rename or drop them")
    return [c for c in table.columns if c in DEMOGRAPHIC_FIELDS]


def persona_grid(personas: pd.DataFrame, stimuli: Sequence[str] | Mapping[str, str]) -> pd.DataFrame:
    """Every persona with every stimulus: len(personas) x len(stimuli) rows, the stimulus text in
    `stimulus` (and its name in `stimulus_name` when stimuli is a mapping name -> text)."""
    persona_columns(personas)
    named = dict(stimuli) if isinstance(stimuli, Mapping) else None
    texts = list(named.values()) if named is not None else list(stimuli)
    if not texts:
        raise ScoreError("stimuli: expected at least one stimulus text (vignette + question + answer format)")
    frames = []
    for i, text in enumerate(texts):
        part = personas.reset_index(drop=True).copy()
        if named is not None:
            part[STIMULUS_NAME] = list(named)[i]
        part[STIMULUS] = text
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def _demographic(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """One row's persona, normalised as prepare normalises a dataset's (whole-number ages, text
    elsewhere); missing values (None, NaN) are left out, as the prompts leave out nulls."""
    given = {c: row[c] for c in columns if not (row[c] is None or (isinstance(row[c], float) and math.isnan(row[c])))}
    reason, persona = check_demographic(given)
    if persona is None:
        raise ScoreError(f"persona {given}: {REASONS[reason]}")  # type: ignore[index]
    return persona


def predict_table(engine: InferenceEngine, table: pd.DataFrame, adapter: str | None = None, temperature: float = 1.0,
                  top_p: float = 1.0, batch_size: int = 16) -> pd.DataFrame:
    """The table with three columns added: `options` (the stimulus's answer scale), `probabilities`
    (the model's distribution over them) and `mean` (the expected answer)."""
    if STIMULUS not in table.columns:
        raise ScoreError(f"the table needs a {STIMULUS!r} column (or build it with persona_grid(personas, stimuli))")
    columns = persona_columns(table)
    records = table.to_dict("records")
    prompts, options = [], []
    for i, row in enumerate(records):
        scale = parse_answer_scale(str(row[STIMULUS]))
        if not scale.bounded:
            raise ScoreError(f"row {i}: no bounded answer scale in the stimulus (expected e.g. 'Only return an integer from 1 "
                             "to 7, ...'); open-ended amounts have no options to score: simulate them with simulate.mode=sample")
        prompts.append(build_prompt(_demographic(row, columns), str(row[STIMULUS])))
        options.append(scale.options)
    probs: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        probs.extend(distributions(engine, prompts[start:end], options[start:end], adapter, temperature, top_p))
    out = table.copy()
    out["options"] = options
    out["probabilities"] = [p.tolist() for p in probs]
    out["mean"] = [float(np.dot(o, p)) for o, p in zip(options, probs)]
    return out
