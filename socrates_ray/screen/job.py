"""`socrates-ray screen`: simulate a planned experiment with each model and analyse it.

    spec -> personas (design.py) -> rows -> each model's pass (simulator.py: local replicas or the Serve
    app; resumable parts under <run>/screen/<name>/simulate/<model>/) -> effects, intervals, power
    (analysis.py) -> a ScreenResult (results.py) -> screen.json, report.md, plots (report.py)

Each model's exact-mode temperature is fitted on the validation split as evaluate fits it, and each
model's error (added to every interval) is the one `screen --from-split` fitted on held-out human
studies (screen_calibration.json in the run's screen folder; trust.py), 0 until one was fitted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from socrates_ray.infer.adapter_check import adapter_problem
from socrates_ray.screen.analysis import Arm, contrast_effect, n_needed, power_at, summarize_arm, verdict
from socrates_ray.screen.design import build_rows, draw_personas, personas_needed
from socrates_ray.screen.report import summary_table, write_screen_report
from socrates_ray.screen.results import Contrast, ModelScreen, OutcomeScreen, ScreenResult, SubgroupEffect
from socrates_ray.screen.simulator import SCREEN_CALIBRATION, ScreenSetup, simulator
from socrates_ray.screen.spec import Experiment, ExperimentError

def arms_of(table: pa.Table) -> dict[tuple[int, int], tuple[Arm, list[dict[str, Any]]]]:
    """(arm index, outcome index) -> (its participants' distributions, their demographics), ordered by
    participant (so a within-subject design's arms line up person by person)."""
    cols = {c: table[c].to_pylist() for c in ("condition_num", "task_num", "participant", "options", "probs", "demographic")}
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(cols["condition_num"], cols["task_num"])):
        if cols["probs"][i] is not None:
            groups.setdefault(key, []).append(i)
    found = {}
    for key, rows in groups.items():
        rows.sort(key=lambda i: cols["participant"][i])
        found[key] = (Arm.of(cols["options"][rows[0]], [cols["probs"][i] for i in rows]), [cols["demographic"][i] for i in rows])
    return found


def analyze(experiment: Experiment, table: pa.Table, model_error: float, seed: int) -> dict[str, OutcomeScreen]:
    """Per outcome: each arm's predicted distribution and mean; each contrast's effect, interval,
    verdict, humans needed and power at the planned n; its subgroup effects."""
    a = experiment.analysis
    rng = np.random.default_rng(seed)
    arm_names = [name for name, _ in experiment.arms()]
    index = {name: i for i, name in enumerate(arm_names)}
    paired = experiment.design == "within"
    planned = a.planned_n or experiment.population.n_per_arm
    groups = arms_of(table)
    outcomes: dict[str, OutcomeScreen] = {}
    for t, outcome in enumerate(experiment.outcomes):
        arms = {name: groups[(index[name], t)] for name in arm_names}
        result = OutcomeScreen({name: summarize_arm(arm) for name, (arm, _) in arms.items()}, [])
        for c in experiment.planned_contrasts():
            (treat, demo_t), (ctrl, demo_c) = arms[c.treatment], arms[c.control]
            e = contrast_effect(treat, ctrl, paired, a.interval, a.bootstrap, rng, model_error)
            contrast = Contrast(**dataclasses.asdict(e), treatment=c.treatment, control=c.control, expected=c.expected,
                                verdict=verdict(e.interval, c.expected), humans_per_arm_needed=n_needed(e.d, a.alpha, a.power, paired),
                                planned_n=planned, power_at_planned_n=power_at(e.d, planned, a.alpha, paired))
            for field in experiment.subgroups:
                levels = sorted({d[field] for d in demo_t + demo_c if d[field] is not None}, key=str)
                per_level = {}
                for level in levels:
                    rows_t = np.array([i for i, d in enumerate(demo_t) if d[field] == level], dtype=int)
                    rows_c = rows_t if paired else np.array([i for i, d in enumerate(demo_c) if d[field] == level], dtype=int)
                    if min(len(rows_t), len(rows_c)) < a.min_subgroup_n:
                        continue
                    sub = contrast_effect(treat.take(rows_t), ctrl.take(rows_c), paired, a.interval, a.bootstrap, rng, model_error)
                    per_level[str(level)] = SubgroupEffect(sub.difference, sub.interval, sub.d, sub.n_treatment, sub.n_control)
                contrast.subgroups[field] = per_level
            result.contrasts.append(contrast)
        outcomes[outcome.name] = result
    return outcomes


def screen_adapters(experiment: Experiment, finetuned: str | None, run_dir: str) -> dict[str, str | None]:
    """Model name -> adapter folder (None = the base model): `finetuned` is the run's chosen export."""
    found: dict[str, str | None] = {}
    for name in experiment.models:
        if name == "base":
            found[name] = None
        elif name == "finetuned":
            if finetuned is None:
                raise ExperimentError(f"models: finetuned, but run {run_dir} has no exported adapter; train first "
                                      "(socrates-ray train or demo), set evaluate.adapter_path, or screen with models: [base]")
            found[name] = finetuned
        else:
            path = experiment.adapters[name]
            if (problem := adapter_problem(path, None)) is not None:  # the base's shapes are checked where it loads
                raise ExperimentError(f"adapters.{name}: {problem}")
            found[name] = path
    return found


def load_model_errors(root: Path, adapters: dict[str, str | None], log: Callable[[str], None]) -> dict[str, float]:
    """Each model's fitted error from screen_calibration.json (0 where none was fitted for this very adapter)."""
    path = root / SCREEN_CALIBRATION
    fitted = json.loads(path.read_text()) if path.is_file() else {}
    errors = {}
    for name, adapter in adapters.items():
        record = fitted.get(name)
        if record and record.get("adapter_path") == adapter:
            errors[name] = float(record["model_error"])
        else:
            errors[name] = 0.0
            why = "for this adapter" if record else "yet"
            log(f"screen: no model error fitted for {name} {why} (`socrates-ray screen --from-split <setting>` fits one on held-out "
                "human studies); its intervals count sampling only and trust the model's effects")
    return errors


def rows_fingerprint(rows: pa.Table) -> str:
    """A hash of what the rows ask (ids, prompts, scales): a changed spec changes it."""
    digest = hashlib.sha256()
    for column in ("sample_id", "prompt", "scale_low", "scale_high"):
        digest.update(json.dumps(rows[column].to_pylist()).encode())
    return digest.hexdigest()[:16]


def keep_only_current(folder: Path, fingerprint: str, log: Callable[[str], None]) -> None:
    """Resume the folder's predictions only if they were made for these very rows: after a spec
    edit (other arms, people or questions under the same row ids) the old parts are removed, with
    a log line, instead of being mixed into the new screening."""
    record = folder / "rows_fingerprint.txt"
    if folder.is_dir() and any(folder.glob("part-*.parquet")) and (not record.is_file() or record.read_text() != fingerprint):
        log(f"screen: the spec changed since {folder} was simulated; simulating it again")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(fingerprint)


def run_screen(setup: ScreenSetup, experiment: Experiment, log: Callable[[str], None] = print) -> ScreenResult:
    """Simulate `experiment` with each of the setup's models and write screen.json, report.md and the plots."""
    out = setup.root / experiment.name
    out.mkdir(parents=True, exist_ok=True)
    personas = draw_personas(experiment.population, personas_needed(experiment), setup.prepared)
    rows = build_rows(experiment, personas)
    arms = experiment.arms()
    log(f"screen: {experiment.name}: {len(arms)} arms x {len(experiment.outcomes)} outcome(s), {experiment.population.n_per_arm} "
        f"people per arm ({experiment.design}-subject, personas from {experiment.population.source}) = {rows.num_rows:,} rows per model; "
        f"models {', '.join(experiment.models)}")
    a = experiment.analysis
    adapters = setup.adapters
    errors = ({name: float(a.model_error) for name in adapters} if a.model_error != "auto"
              else load_model_errors(setup.root, adapters, log))
    first = next(iter(setup.passes.values()))
    result = ScreenResult(
        experiment=experiment.name, design=experiment.design, n_per_arm=experiment.population.n_per_arm,
        population=experiment.population.model_dump(), arms={name: text for name, text in arms}, control=experiment.control_arm(),
        outcomes=[o.name for o in experiment.outcomes], analysis=a.model_dump(), planned_n=a.planned_n or experiment.population.n_per_arm,
        model_path=first.model_path, adapters=adapters,
    )
    with simulator(setup, log) as sim:
        fingerprint = rows_fingerprint(rows)
        for name in experiment.models:
            keep_only_current(out / "simulate" / name, fingerprint, log)
            table = sim.predict(name, rows, out / "simulate" / name)
            result.models[name] = ModelScreen(sim.temperature(name), errors[name],
                                              analyze(experiment, table, errors[name], experiment.population.seed))
    result.report = str(write_screen_report(result, out))
    log("screen: predicted effects (treatment - control, in answer points; interval at "
        f"{a.interval:.0%}, for a human study of {experiment.population.n_per_arm} per arm)\n" + summary_table(result))
    log(f"screen: report {result.report}, numbers {out / 'screen.json'}")
    return result
