"""The split settings: unseen studies, unseen conditions, unseen tasks, unseen participants (pure).

Splits come from SocSci210's metadata files when they exist, else they are drawn from a seed in
the same shapes (the paper, Kolluri et al. EMNLP 2025, section 3). The 75/25 files may list condition/task numbers or sample
ids: each study's lists are checked against what the data holds and read as whichever they fit.

Row assignment, per setting:
- unseen_studies: participant_mapping "unseen" -> eval, "seen" -> train; a study in neither list
  is quarantined (reason unknown_study) because no setting can place it;
- unseen_conditions / unseen_tasks: rows of a mapped study whose condition (task) is listed under
  "eval" -> eval; every other row -> train (unmapped studies train the model, as in the paper);
- unseen_participants: per study, a seeded share of its participants (data.participant_fraction)
  -> train, with every row of theirs (a participant is never split: within-subject designs repeat a
  task per person); the study's other participants -> eval. Participants are added to train where a
  condition or task would otherwise be seen by nobody in training. all_settings does not include
  this setting: it would train on a tenth of each study.

Validation (data.validation_fraction): a slice of each setting's TRAIN rows goes to a third split,
"val", held out the same way the setting holds out its eval rows: whole studies (unseen_studies),
whole conditions (unseen_conditions), whole tasks (unseen_tasks), a mix of the three
(all_settings), other participants (unseen_participants: drawn from the participants not trained on,
validation_fraction x the number trained on per study, before the rest become eval). So the
validation split shows the shift the test split shows, without touching the test split: training's
eval loss, checkpoint selection (keep_by) and the fitted exact-mode temperature
(simulate.temperature: auto) all read it. The units are chosen once from pass 1's keys
(round(fraction x units), at least one, never all, never a study's last training condition or
task; ranked by a seeded hash), so every shard agrees and a re-run picks the same ones;
splits/validation.json lists them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from socrates_ray.errors import SocratesError

SETTING_FILES = {
    "unseen_studies": "participant_mapping.json",
    "unseen_conditions": "condition_mapping.json",
    "unseen_tasks": "task_mapping.json",
}
SETTING_KEY = {"unseen_conditions": "condition_num", "unseen_tasks": "task_num"}
PARTICIPANTS = "unseen_participants"
SPLITS = ("train", "val", "eval")


def unit_draw(seed: int, *key: object) -> float:
    """A stable pseudo-random number in [0, 1) for one held-out unit (study, condition or task)."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SplitError(SocratesError, ValueError):
    """A split file that cannot be read or matched to the data."""


@dataclass
class StudyKeys:
    """What pass 1 saw of one study: its condition numbers, task numbers and sample ids."""

    conditions: set[int] = field(default_factory=set)
    tasks: set[int] = field(default_factory=set)
    sample_ids: list[int] = field(default_factory=list)
    participants: dict[int, set[tuple[int, int]]] = field(default_factory=dict)  # participant -> its (condition, task)s


@dataclass
class Mapping75:
    """One 75/25 file resolved: per study the eval values, and what they are."""

    eval_values: dict[str, frozenset[int]]
    train_values: dict[str, frozenset[int]]
    unit: dict[str, Literal["num", "sample_id"]]


@dataclass
class Splits:
    seen: frozenset[str]
    unseen: frozenset[str]
    conditions: Mapping75
    tasks: Mapping75
    sources: dict[str, str]
    missing_studies: dict[str, list[str]]  # setting -> study ids named in a file but absent in the data
    validation_fraction: float = 0.0
    validation_seed: int = 0
    # setting -> {"studies": {id}, "conditions": {(id, num)}, "tasks": {(id, num)}}: units moved from train to val
    validation: dict[str, dict[str, frozenset]] = field(default_factory=dict)
    participant_fraction: float = 0.1
    # unseen_participants: per study, the participants trained on and those held for validation
    participants_train: dict[str, frozenset[int]] = field(default_factory=dict)
    participants_val: dict[str, frozenset[int]] = field(default_factory=dict)

    def known_study(self, study_id: str) -> bool:
        return study_id in self.seen or study_id in self.unseen

    def assign(self, setting: str, study_id: str, sample_id: int, condition_num: int, task_num: int,
               participant: int = -1) -> Literal["train", "eval"]:
        """train or eval for one kept row under one setting.

        all_settings: train only on rows that every unit setting (studies, conditions, tasks) trains
        on, so one model can be evaluated on the eval split of each without having seen any of it."""
        if setting == PARTICIPANTS:
            return "train" if participant in self.participants_train.get(study_id, ()) else "eval"
        if setting == "all_settings":
            each = (self.assign(s, study_id, sample_id, condition_num, task_num) for s in SETTING_FILES)
            return "train" if all(split == "train" for split in each) else "eval"
        if setting == "unseen_studies":
            return "eval" if study_id in self.unseen else "train"
        mapping = self.conditions if setting == "unseen_conditions" else self.tasks
        eval_values = mapping.eval_values.get(study_id)
        if eval_values is None:
            return "train"
        if mapping.unit[study_id] == "sample_id":
            return "eval" if sample_id in eval_values else "train"
        value = condition_num if setting == "unseen_conditions" else task_num
        return "eval" if value in eval_values else "train"

    def holds_for_validation(self, setting: str, study_id: str, condition_num: int, task_num: int) -> bool:
        """Whether a row the setting trains on goes to its validation split instead."""
        units = self.validation.get(setting)
        if not units:
            return False
        return (study_id in units["studies"] or (study_id, condition_num) in units["conditions"]
                or (study_id, task_num) in units["tasks"])

    def split_of(self, setting: str, study_id: str, sample_id: int, condition_num: int, task_num: int,
                 participant: int = -1) -> Literal["train", "val", "eval"]:
        """train, val or eval for one kept row under one setting (assign, then the validation slice)."""
        if setting == PARTICIPANTS and participant in self.participants_val.get(study_id, ()):
            return "val"
        split = self.assign(setting, study_id, sample_id, condition_num, task_num, participant)
        if split == "train" and self.holds_for_validation(setting, study_id, condition_num, task_num):
            return "val"
        return split

    def manifest(self) -> dict[str, Any]:
        """The split files as used (JSON-ready), for the prepared folder."""

        def dump(m: Mapping75) -> dict[str, Any]:
            return {
                s: {"unit": m.unit[s], "train": sorted(m.train_values[s]), "eval": sorted(m.eval_values[s])}
                for s in sorted(m.eval_values)
            }

        return {
            "unseen_studies": {"seen": sorted(self.seen), "unseen": sorted(self.unseen)},
            "unseen_conditions": dump(self.conditions),
            "unseen_tasks": dump(self.tasks),
            PARTICIPANTS: {"fraction": self.participant_fraction,
                           "train": {s: sorted(p) for s, p in sorted(self.participants_train.items())},
                           "val": {s: sorted(p) for s, p in sorted(self.participants_val.items())}},
            "sources": self.sources,
            "missing_studies": self.missing_studies,
            "validation": {
                "fraction": self.validation_fraction, "seed": self.validation_seed,
                "held_out": {
                    setting: {kind: sorted(map(list, v)) if kind != "studies" else sorted(v) for kind, v in units.items()}
                    for setting, units in self.validation.items()
                },
            },
        }


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SplitError(f"metadata/{name}: not valid JSON ({exc})") from None


def resolve_participant_mapping(raw: Any, studies: dict[str, StudyKeys]) -> tuple[frozenset[str], frozenset[str], list[str]]:
    name = SETTING_FILES["unseen_studies"]
    if not isinstance(raw, dict) or not {"seen", "unseen"} <= set(raw):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise SplitError(f"metadata/{name}: expected {{\"seen\": [study ids], \"unseen\": [study ids]}}, got keys {got}")
    seen, unseen = frozenset(map(str, raw["seen"])), frozenset(map(str, raw["unseen"]))
    both = seen & unseen
    if both:
        raise SplitError(f"metadata/{name}: studies listed as both seen and unseen: {sorted(both)[:5]}")
    missing = sorted((seen | unseen) - set(studies))
    return seen, unseen, missing


def resolve_mapping75(raw: Any, setting: str, studies: dict[str, StudyKeys]) -> tuple[Mapping75, list[str]]:
    """Read a condition/task mapping; decide per study whether lists hold numbers or sample ids."""
    name = SETTING_FILES[setting]
    if not isinstance(raw, dict):
        raise SplitError(f"metadata/{name}: expected {{study_id: {{\"train\": [...], \"eval\": [...]}}}}, got {type(raw).__name__}")
    mapping = Mapping75({}, {}, {})
    missing: list[str] = []
    for study_id, entry in raw.items():
        if not isinstance(entry, dict) or not {"train", "eval"} <= set(entry):
            raise SplitError(f"metadata/{name}: study {study_id!r} should map to {{\"train\": [...], \"eval\": [...]}}, got {entry!r:.80}")
        if study_id not in studies:
            missing.append(study_id)
            continue
        train = frozenset(int(v) for v in entry["train"])
        evals = frozenset(int(v) for v in entry["eval"])
        keys = studies[study_id]
        numbers = keys.conditions if setting == "unseen_conditions" else keys.tasks
        values = train | evals
        if values <= numbers:
            unit: Literal["num", "sample_id"] = "num"
        elif values <= set(keys.sample_ids):
            unit = "sample_id"
        else:
            what = "condition" if setting == "unseen_conditions" else "task"
            stray = sorted(values - numbers)[:5]
            raise SplitError(
                f"metadata/{name}: study {study_id!r} lists values {stray} that are neither its "
                f"{what} numbers {sorted(numbers)[:10]} nor its sample ids (first of them: "
                f"{sorted(keys.sample_ids)[:5]}); the file looks like {_looks_like(values, numbers, keys.sample_ids)}. "
                "Fix the file or drop the study from it."
            )
        mapping.eval_values[study_id] = evals
        mapping.train_values[study_id] = train
        mapping.unit[study_id] = unit
    return mapping, sorted(missing)


def _looks_like(values: frozenset[int], numbers: set[int], sample_ids: list[int]) -> str:
    in_numbers = len(values & numbers)
    in_samples = len(values & set(sample_ids))
    if in_numbers >= in_samples:
        return f"{in_numbers} of {len(values)} values match condition/task numbers"
    return f"{in_samples} of {len(values)} values match sample ids"


def draw_splits(studies: dict[str, StudyKeys], unseen_fraction: float, eval_fraction: float, seed: int) -> tuple[frozenset[str], frozenset[str], Mapping75, Mapping75]:
    """Deterministic splits of the published shapes, for data without metadata files."""
    rng = np.random.default_rng(seed)
    ids = sorted(studies)
    order = rng.permutation(len(ids))
    n_unseen = max(1, int(round(unseen_fraction * len(ids)))) if len(ids) > 1 else 0
    unseen = frozenset(ids[i] for i in order[:n_unseen])
    seen = frozenset(ids) - unseen

    def draw(attr: str) -> Mapping75:
        m = Mapping75({}, {}, {})
        for study_id in ids:
            values = sorted(getattr(studies[study_id], attr))
            if len(values) < 2:
                continue
            shuffled = [values[i] for i in rng.permutation(len(values))]
            k = max(1, int(round(eval_fraction * len(values))))
            m.eval_values[study_id] = frozenset(shuffled[:k])
            m.train_values[study_id] = frozenset(shuffled[k:])
            m.unit[study_id] = "num"
        return m

    return seen, unseen, draw("conditions"), draw("tasks")


def build_splits(
    metadata: dict[str, str | None],
    studies: dict[str, StudyKeys],
    unseen_fraction: float,
    eval_fraction: float,
    seed: int,
    validation_fraction: float = 0.0,
    participant_fraction: float = 0.1,
) -> Splits:
    """Combine metadata files (text or None per file name) with seeded draws for missing ones."""
    seen, unseen, cond_drawn, task_drawn = draw_splits(studies, unseen_fraction, eval_fraction, seed)
    sources = {s: f"drawn from data.split_seed={seed}" for s in SETTING_FILES}
    missing: dict[str, list[str]] = {}
    text = metadata.get(SETTING_FILES["unseen_studies"])
    if text is not None:
        seen, unseen, missing["unseen_studies"] = resolve_participant_mapping(_parse_json(text, SETTING_FILES["unseen_studies"]), studies)
        sources["unseen_studies"] = f"metadata/{SETTING_FILES['unseen_studies']}"
    resolved = {"unseen_conditions": cond_drawn, "unseen_tasks": task_drawn}
    for setting in ("unseen_conditions", "unseen_tasks"):
        text = metadata.get(SETTING_FILES[setting])
        if text is not None:
            resolved[setting], missing[setting] = resolve_mapping75(_parse_json(text, SETTING_FILES[setting]), setting, studies)
            sources[setting] = f"metadata/{SETTING_FILES[setting]}"
    splits = Splits(seen, unseen, resolved["unseen_conditions"], resolved["unseen_tasks"], sources, missing,
                    validation_fraction, seed, participant_fraction=participant_fraction)
    splits.validation = draw_validation(splits, studies, validation_fraction, seed)
    splits.participants_train, splits.participants_val = draw_participants(studies, participant_fraction, validation_fraction, seed)
    sources[PARTICIPANTS] = f"{participant_fraction:.0%} of each study's participants trained on, drawn from data.split_seed={seed}"
    return splits


def draw_participants(studies: dict[str, StudyKeys], fraction: float, validation_fraction: float,
                      seed: int) -> tuple[dict[str, frozenset[int]], dict[str, frozenset[int]]]:
    """Per study, (participants trained on, participants held for validation) of unseen_participants.

    round(fraction x participants) ranked by a seeded hash (at least one, never all), then, in the
    same order, one more for each condition or task no trained participant saw; validation takes the
    next round(validation_fraction x trained) (at least one when it is on), leaving at least one
    participant to evaluate on."""
    train: dict[str, frozenset[int]] = {}
    val: dict[str, frozenset[int]] = {}
    for study_id in sorted(studies):
        people = studies[study_id].participants
        if len(people) < 2:
            continue
        order = sorted(people, key=lambda p: unit_draw(seed, "participant", study_id, p))
        k = min(len(order) - 1, max(1, round(fraction * len(order))))
        chosen = order[:k]
        seen = set().union(*(people[p] for p in chosen))
        for p in order[k:]:  # a condition or task nobody trained on would be an unseen condition, not an unseen person
            if {c for c, _ in people[p]} - {c for c, _ in seen} or {t for _, t in people[p]} - {t for _, t in seen}:
                chosen.append(p)
                seen |= people[p]
        picked = set(chosen)
        rest = [p for p in order if p not in picked]
        n_val = min(len(rest) - 1, max(1, round(validation_fraction * len(chosen)))) if validation_fraction > 0 else 0
        train[study_id] = frozenset(chosen)
        val[study_id] = frozenset(rest[:max(n_val, 0)])
    return train, val


def _take(candidates: list, share: float, seed: int, kind: str) -> frozenset:
    """round(share * n) of the candidate units (at least 1, never all), ranked by a seeded hash.
    Units are (study_id, number) pairs or study ids; a pair is skipped when it is the last unit its
    study still trains on, so validation never takes a study out of the train split."""
    n = len(candidates)
    if n < 2 or share <= 0:
        return frozenset()
    k = min(n - 1, max(1, round(share * n)))
    left: dict[Any, int] = {}
    for unit in candidates:
        if isinstance(unit, tuple):
            left[unit[0]] = left.get(unit[0], 0) + 1
    taken: list = []
    for unit in sorted(candidates, key=lambda u: unit_draw(seed, kind, u)):
        if len(taken) == k:
            break
        if isinstance(unit, tuple):
            if left[unit[0]] < 2:
                continue
            left[unit[0]] -= 1
        taken.append(unit)
    return frozenset(taken)


def draw_validation(splits: Splits, studies: dict[str, StudyKeys], fraction: float, seed: int) -> dict[str, dict[str, frozenset]]:
    """For each setting, the units of its train split that go to validation: studies for
    unseen_studies, conditions for unseen_conditions, tasks for unseen_tasks, a third of the share of
    each kind for all_settings (its test split holds out all three kinds)."""
    if fraction <= 0:
        return {}
    known = [s for s in sorted(studies) if splits.known_study(s)]
    seen = [s for s in known if s not in splits.unseen]

    def trained(mapping: Mapping75, study_id: str, values: set[int]) -> list[int]:
        held = mapping.eval_values.get(study_id, frozenset()) if mapping.unit.get(study_id) == "num" else frozenset()
        return sorted(v for v in values if v not in held)

    cond_units = {s: [(s, c) for c in trained(splits.conditions, s, studies[s].conditions)] for s in known}
    task_units = {s: [(s, t) for t in trained(splits.tasks, s, studies[s].tasks)] for s in known}
    empty: frozenset = frozenset()
    out = {
        "unseen_studies": {"studies": _take(seen, fraction, seed, "study"), "conditions": empty, "tasks": empty},
        "unseen_conditions": {"studies": empty, "tasks": empty,
                              "conditions": _take([u for s in known for u in cond_units[s]], fraction, seed, "condition")},
        "unseen_tasks": {"studies": empty, "conditions": empty,
                         "tasks": _take([u for s in known for u in task_units[s]], fraction, seed, "task")},
    }
    # all_settings trains on seen studies' unheld conditions and tasks: hold out some of each kind
    third = fraction / 3
    out["all_settings"] = {
        "studies": _take(seen, third, seed, "study"),
        "conditions": _take([u for s in seen for u in cond_units[s]], third, seed, "condition"),
        "tasks": _take([u for s in seen for u in task_units[s]], third, seed, "task"),
    }
    return out
