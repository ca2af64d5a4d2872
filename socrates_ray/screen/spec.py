"""The experiment spec a researcher writes before paying participants (YAML -> a validated Experiment).

    name: carbon_tax_framing
    population: {source: split, split: all_settings/train, n_per_arm: 200, seed: 0}
    template: "Lawmakers are currently debating a national carbon tax. {frame}"
    factors: {frame: {control: "", cost: "Critics estimate the policy would cost ..."}}
    outcomes:
      - name: support
        question: "How much do you support or oppose this proposal? Only return an integer from 1 to 7, ..."
    subgroups: [party_id]

Arms come either from `conditions` (a name and a stimulus each) or from `template` + `factors`
(every combination of the factors' levels fills the template's {placeholders}: a 2x2 design needs
no copy-paste). A participant's stimulus is the arm's text, a blank line, then the outcome's
question with its answer-format sentence, as in SocSci210's stimuli; the answer scale is parsed
from that sentence by the same parser prepare uses, and a spec whose scale cannot be parsed is
refused before anything is simulated. Unknown keys are errors that name their dotted path.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from socrates_ray.config.loading import format_validation_errors, load_yaml_mapping
from socrates_ray.data.prompts import AnswerScale, parse_answer_scale
from socrates_ray.data.schema import DEMOGRAPHIC_FIELDS
from socrates_ray.errors import SocratesError


class ExperimentError(SocratesError, ValueError):
    """An experiment spec that cannot be screened; the message names the dotted path and the fix."""


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Population(Part):
    source: Literal["split", "csv", "marginals"] = Field(
        "split", description="Where personas come from: `split` resamples the demographics of a prepared split's "
        "participants, `csv` reads a file with the 16 demographic columns, `marginals` draws each field independently.")
    split: str = Field("all_settings/train", description="source=split: <setting>/<train|val|eval> under data.prepared.")
    csv: str | None = Field(None, description="source=csv: a CSV whose columns are demographic fields (missing ones are left out of the persona).")
    marginals: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="source=marginals: field -> {value: weight}; fields not named are left out of the persona.")
    n_per_arm: int = Field(200, ge=2, description="Simulated participants per arm (the same people in every arm when design=within).")
    seed: int = Field(0, description="Seed of the persona draw and of the bootstrap.")

    @model_validator(mode="after")
    def _source_inputs(self) -> "Population":
        if self.source == "csv" and not self.csv:
            raise ValueError("source=csv needs population.csv (a CSV file with demographic columns)")
        if self.source == "marginals":
            if not self.marginals:
                raise ValueError("source=marginals needs population.marginals (field -> {value: weight})")
            unknown = sorted(set(self.marginals) - set(DEMOGRAPHIC_FIELDS))
            if unknown:
                raise ValueError(f"unknown demographic field(s) {unknown}; expected some of {list(DEMOGRAPHIC_FIELDS)}")
        return self


class Condition(Part):
    name: str = Field(description="Arm name, used in contrasts and the report.")
    stimulus: str = Field(description="What participants in this arm read before the question (vignette, frame, cue).")


class Outcome(Part):
    name: str = Field(description="Outcome name, used in the report.")
    question: str = Field(description="The question and its answer-format sentence, e.g. '... Only return an integer from "
                          "1 to 7, where 1 means ... and 7 means ..., nothing else.' (the phrasings prepare parses).")
    options: list[int] | None = Field(None, min_length=2, description="Explicit answer options (low..high, consecutive); "
                                      "null = parsed from the question's answer-format sentence.")


class Contrast(Part):
    treatment: str = Field(description="Arm name.")
    control: str = Field(description="Arm name it is compared with.")
    expected: Literal["positive", "negative"] | None = Field(
        None, description="The direction the researcher expects (treatment minus control); the report flags a prediction against it.")


class Analysis(Part):
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided significance level of the power analysis.")
    power: float = Field(0.8, gt=0, lt=1, description="Target power: humans per arm needed to detect each predicted effect.")
    interval: float = Field(0.9, gt=0, lt=1, description="Coverage of the reported intervals.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap draws (personas resampled, one answer drawn from each participant's distribution).")
    planned_n: int | None = Field(None, ge=2, description="Humans per arm the researcher plans: the report gives the power at it "
                                  "(null = population.n_per_arm).")
    model_error: float | Literal["auto"] = Field(
        "auto", description="The sd of the model's error in an effect, as a share of the answer scale's range, added in quadrature "
        "to every interval. auto: the one `socrates-ray screen --from-split` fitted on held-out human studies "
        "(screen_calibration.json in the run folder), 0 (sampling uncertainty only) until one was fitted.")
    min_subgroup_n: int = Field(20, ge=2, description="A subgroup level is analysed when each arm has at least this many of its participants.")


class Experiment(Part):
    name: str = Field(description="Experiment name: its output folder is <run>/screen/<name>.")
    population: Population = Field(default_factory=Population)
    design: Literal["between", "within"] = Field(
        "between", description="between: other people in each arm; within: the same people in every arm (paired contrasts).")
    conditions: list[Condition] = Field(default_factory=list, description="The arms, each with its stimulus (or use template + factors).")
    template: str | None = Field(None, description="Stimulus template with {factor} placeholders, filled from `factors`.")
    factors: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="factor -> {level name: text}; every combination is an arm named level+level.")
    control: str | None = Field(None, description="The control arm's name (default: the first arm).")
    outcomes: list[Outcome] = Field(min_length=1, description="What participants answer after the stimulus.")
    contrasts: list[Contrast] = Field(default_factory=list, description="Arm comparisons (default: each arm vs the control).")
    subgroups: list[str] = Field(default_factory=list, description="Demographic fields to break each contrast down by (CATE per level).")
    models: list[str] = Field(["base", "finetuned"], min_length=1, description="Models to screen with: base, finetuned (the run's "
                              "adapter, as evaluate chooses it) or a name in `adapters`.")
    adapters: dict[str, str] = Field(default_factory=dict, description="Extra adapters: name -> PEFT adapter folder.")
    analysis: Analysis = Field(default_factory=Analysis)

    @model_validator(mode="after")
    def _arms_and_names(self) -> "Experiment":
        if bool(self.conditions) == bool(self.template):
            raise ValueError("give the arms either as `conditions` (name + stimulus each) or as `template` + `factors`, not both or neither")
        if self.template:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
            if fields != set(self.factors):
                raise ValueError(f"template placeholders {sorted(fields)} and factors {sorted(self.factors)} must be the same names")
            for factor, levels in self.factors.items():
                if not levels:
                    raise ValueError(f"factors.{factor}: needs at least one level")
        names = [a for a, _ in self.arms()]
        if len(names) < 2:
            raise ValueError(f"a screening needs at least two arms; got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique; got {names}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control: {self.control!r} is not an arm; arms are {names}")
        for i, c in enumerate(self.contrasts):
            for side in ("treatment", "control"):
                if getattr(c, side) not in names:
                    raise ValueError(f"contrasts.{i}.{side}: {getattr(c, side)!r} is not an arm; arms are {names}")
        bad = sorted(set(self.subgroups) - set(DEMOGRAPHIC_FIELDS))
        if bad:
            raise ValueError(f"subgroups: unknown demographic field(s) {bad}; expected some of {list(DEMOGRAPHIC_FIELDS)}")
        if len({o.name for o in self.outcomes}) != len(self.outcomes):
            raise ValueError("outcomes: names must be unique")
        for m in self.models:
            if m not in ("base", "finetuned") and m not in self.adapters:
                raise ValueError(f"models: {m!r} is neither base, finetuned nor a name in adapters ({sorted(self.adapters)})")
        return self

    def arms(self) -> list[tuple[str, str]]:
        """(name, stimulus text) of every arm, in order; the control first unless `control` says otherwise."""
        if self.conditions:
            return [(c.name, c.stimulus.strip()) for c in self.conditions]
        factors = list(self.factors)
        combos = itertools.product(*(list(self.factors[f].items()) for f in factors))
        return [("+".join(level for level, _ in combo),
                 " ".join(self.template.format(**{f: text for f, (_, text) in zip(factors, combo)}).split()))
                for combo in combos]

    def control_arm(self) -> str:
        return self.control or self.arms()[0][0]

    def planned_contrasts(self) -> list[Contrast]:
        """The contrasts to report: the spec's, else every arm against the control."""
        if self.contrasts:
            return list(self.contrasts)
        control = self.control_arm()
        return [Contrast(treatment=name, control=control) for name, _ in self.arms() if name != control]


def stimulus(arm_text: str, outcome: Outcome) -> str:
    """What a participant reads: the arm's text, a blank line, the question (SocSci210's layout)."""
    return f"{arm_text}\n\n{outcome.question.strip()}" if arm_text else outcome.question.strip()


def outcome_scale(outcome: Outcome, where: str) -> AnswerScale:
    """The outcome's bounded answer scale: its explicit options or the one parsed from its question."""
    if outcome.options is not None:
        opts = sorted(outcome.options)
        if opts != list(range(opts[0], opts[-1] + 1)):
            raise ExperimentError(f"{where}.options: expected consecutive integers (low..high), got {outcome.options}")
        return AnswerScale("bounded", opts[0], opts[-1], "explicit options")
    scale = parse_answer_scale(outcome.question)
    if not scale.bounded:
        raise ExperimentError(
            f"{where}.question: no bounded answer scale found ({scale.phrasing or scale.kind}); end the question with an "
            "answer-format sentence such as 'Only return an integer from 1 to 7, where 1 means ... and 7 means ..., nothing else.' "
            f"or give {where}.options")
    return scale


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML; every problem names its dotted path."""
    tree = load_yaml_mapping(path, "--experiment", "configs/experiments/carbon_tax_framing.yaml",
                             "fields (name, population, conditions, outcomes, ...)", ExperimentError)
    try:
        experiment = Experiment.model_validate(tree)
    except ValidationError as err:
        raise ExperimentError(format_validation_errors(err, str(path), "docs/screening.md describes every field", Experiment)) from None
    for i, outcome in enumerate(experiment.outcomes):
        outcome_scale(outcome, f"outcomes.{i}")
    return experiment
