"""The evaluation job: for each split setting, simulate the base model and the finetuned adapter on
the setting's eval rows (in-process replicas or through the Serve app), score both with metrics.py
against the uniform guess, the floors and the regression anchor, and write report.py's outputs.

    plan = build_evaluation(cfg, model_path, adapter)     # the builder: every setting, as plain values
    result = run_evaluation(plan)                         # an EvaluationResult (results.py)

Outputs in the plan's folder (default <run>/eval/): <setting>/<base|finetuned>/predictions.parquet
(resumable parts beside it), metrics.json, report.md and PNG plots; with simulate.temperature=auto
also calibration/<base|finetuned>/ (the validation predictions and calibration.json: each model's
fitted temperature).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import Config
from socrates_ray.data.prepared import cell_ranges, load_split_rows, val_or_train
from socrates_ray.data.splits import PARTICIPANTS
from socrates_ray.eval.anchor import describe, fit_anchor, predict_anchor
from socrates_ray.eval.calibrate import CalibrationSplit, build_calibration_split, resolve_temperature
from socrates_ray.eval.metrics import Cell, CellKey, baseline_metrics, compare, group_cells, model_metrics
from socrates_ray.eval.parity import parity_check
from socrates_ray.eval.passes import SimulationPass, build_pass
from socrates_ray.eval.replica import ReplicaPool
from socrates_ray.eval.report import past_floor_note, results_table, temperature_line, write_report
from socrates_ray.eval.results import AnchorInfo, EvaluationResult, FitCheck, FitScores, ModelScores, ParityCheck, SettingResult
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.eval.truth import RowTruth, Truth, load_row_truth, load_truth, truth_distance
from socrates_ray.infer import engine_spec

FINETUNED = "finetuned"  # the name a run's own adapter is evaluated, served and screened under


@dataclass(frozen=True)
class EvaluationPlan:
    """Everything an evaluation reads, as plain values (build_evaluation)."""

    prepared: str
    raw: str  # where the synthetic truth is, if the data has one
    out: Path
    settings: tuple[str, ...]
    trained_on: str  # train.setting: the anchor's training split, the calibration and fit-check splits
    max_per_cell: int | None
    seed: int
    parity_fields: tuple[str, ...]
    floor_resamples: int
    anchor: bool
    fit_check_cells: int
    fit_check_per_cell: int
    parity_cells: int
    parity_per_cell: int
    temperature: float | str  # simulate.temperature: a number, or "auto" (fitted per model)
    calibration: CalibrationSplit
    passes: dict[str, SimulationPass]  # "base" (and "finetuned"), each at T = 1 until its temperature is resolved


def evaluation_dir(cfg: Config) -> Path:
    """Where an evaluation writes: evaluate.output_dir, else <run>/eval."""
    return Path(cfg.evaluate.output_dir) if cfg.evaluate.output_dir else cfg.run_dir / "eval"


def build_evaluation(cfg: Config, model_path: str, adapter_path: str | None, endpoint: str | None = None,
                     token: str | None = None) -> EvaluationPlan:
    """The builder. endpoint: evaluate through the running Serve app (the adapter registered there as
    'finetuned'); None: local replicas, one pool (base and adapter loaded) for every pass."""
    sim, e = cfg.simulate, cfg.evaluate
    placeholder = 1.0 if sim.temperature == "auto" else None

    def model_pass(adapter: str | None) -> SimulationPass:
        return build_pass(sim, model_path, cfg.prompt.system_prompt, engine_spec(cfg.model), adapter_path=adapter,
                          adapter_name=None if adapter is None else FINETUNED, temperature=placeholder, endpoint=endpoint, token=token)

    passes = {"base": model_pass(None)} | ({FINETUNED: model_pass(adapter_path)} if adapter_path else {})
    return EvaluationPlan(
        prepared=cfg.data.prepared, raw=str(cfg.data.raw), out=evaluation_dir(cfg),
        settings=tuple(e.settings), trained_on=cfg.train.setting, max_per_cell=sim.max_per_cell, seed=cfg.run.seed,
        parity_fields=tuple(e.parity_fields), floor_resamples=e.floor_resamples, anchor=e.anchor, fit_check_cells=e.fit_check_cells,
        fit_check_per_cell=e.fit_check_per_cell, parity_cells=e.parity_cells, parity_per_cell=e.parity_per_cell, temperature=sim.temperature, calibration=build_calibration_split(cfg), passes=passes,
    )


def run_evaluation(plan: EvaluationPlan, log: Callable[[str], None] = print) -> EvaluationResult:
    """Evaluate base (and finetuned, when the plan has an adapter) on every planned setting."""
    base = plan.passes["base"]
    if base.endpoint:
        return _evaluate(plan, None, log)
    adapter = plan.passes.get(FINETUNED)
    with ReplicaPool(base.model_path, base.system_prompt, {FINETUNED: adapter.adapter_path} if adapter else None, base.replicas) as pool:
        return _evaluate(plan, pool, log)


def scores(cells: dict[CellKey, Cell], truth: Truth | None, row_truth: RowTruth | None) -> ModelScores:
    """A model's metrics on its cells, with its distance to the truth where the data has one."""
    m = model_metrics(cells)
    m.vs_truth = truth_distance(cells, truth, row_truth)
    return m


def _evaluate(plan: EvaluationPlan, pool: ReplicaPool | None, log: Callable[[str], None]) -> EvaluationResult:
    truth = load_truth(plan.raw)
    row_truth = load_row_truth(plan.raw) if truth else None
    fields = list(plan.parity_fields)
    base = plan.passes["base"]
    adapter = plan.passes[FINETUNED].adapter_path if FINETUNED in plan.passes else None
    result = EvaluationResult(model=base.model_path, adapter=adapter, mode=base.decoding.mode, settings={}, temperature={})
    # simulate.temperature=auto: one temperature per model, fitted on the validation split (never the test split)
    passes: dict[str, SimulationPass] = {}
    for name, template in plan.passes.items():
        t, fit = resolve_temperature(plan.temperature, template, plan.calibration, plan.out / "calibration" / name, log, pool)
        result.temperature[name], passes[name] = t, template.at_temperature(t)
        if fit is not None:
            result.calibration[name] = fit
    anchor = None
    if plan.anchor:
        anchor = fit_anchor(load_split_rows(plan.prepared, plan.trained_on, "train"), val_or_train(plan.prepared, plan.trained_on))
        result.anchor = AnchorInfo(trained_on=f"{plan.trained_on}/train", **describe(anchor))
        log(f"evaluate: regression anchor fitted on {plan.trained_on}/train (ridge alpha {anchor.alpha:g}, spread {anchor.spread:g}, "
            f"chosen on the validation split)")
    finetuned_tables: dict[str, Any] = {}
    for setting in plan.settings:
        covered = plan.trained_on == setting or (plan.trained_on == "all_settings" and setting != PARTICIPANTS)
        if adapter and not covered:
            log(f"evaluate: warning: the adapter was trained on train.setting={plan.trained_on}, whose train split overlaps "
                f"{setting}'s eval split; its {setting} numbers are optimistic (train on "
                f"{'unseen_participants' if setting == PARTICIPANTS else 'all_settings'} to avoid this)")
        rows = load_split_rows(plan.prepared, setting, "eval", plan.max_per_cell, plan.seed)
        ranges = cell_ranges(plan.prepared, setting, "eval")  # the whole cell's humans, whatever max_per_cell scores
        models: dict[str, ModelScores] = {}
        for name, p in passes.items():
            log(f"evaluate: {setting}: {name} model on {rows.num_rows:,} rows"
                + (f" (temperature {p.decoding.temperature:.2f})" if p.decoding.mode == "exact" else ""))
            table = pq.read_table(run_simulation(rows, plan.out / setting / name, p, pool, log))
            cells = group_cells(table.to_pylist(), fields, ranges)
            models[name] = scores(cells, truth, row_truth)
            if name == FINETUNED:
                finetuned_tables[setting] = table
        if anchor is not None:
            models["anchor"] = scores(group_cells(predict_anchor(anchor, rows).to_pylist(), fields, ranges), truth, row_truth)
        baselines = baseline_metrics(cells, truth, plan.floor_resamples, plan.seed)
        result.settings[setting] = SettingResult(rows.num_rows, models, baselines, compare(models, baselines))
        if plan.parity_cells and fields:
            result.settings[setting].parity = parity_pass(plan, setting, passes, anchor, ranges, pool, log)
    if plan.fit_check_cells:
        result.fit_check = fit_check(plan, passes, anchor, truth, row_truth, pool, log)
    report = write_report(result, plan.out, finetuned_tables)
    log("evaluate: Wasserstein distance, lower is better (the paper's section 5)\n" + results_table(result))
    if line := past_floor_note(result):
        log("evaluate: " + line)
    if line := temperature_line(result):
        log("evaluate: " + line)
    log(f"evaluate: report {report}, metrics {plan.out / 'metrics.json'}")
    result.report = str(report)
    return result


def fit_check(plan: EvaluationPlan, passes: dict[str, SimulationPass], anchor: Any, truth: Truth | None, row_truth: RowTruth | None,
              pool: ReplicaPool | None, log: Callable[[str], None]) -> FitCheck:
    """Can the models fit what they saw? W on the largest cells of train.setting's train split."""
    rows = largest_cells(plan.prepared, plan.trained_on, "train", plan.fit_check_cells, plan.fit_check_per_cell, plan.seed)
    ranges = cell_ranges(plan.prepared, plan.trained_on, "train")
    split = f"{plan.trained_on}/train"
    models: dict[str, FitScores] = {}
    for name, p in passes.items():
        log(f"evaluate: fit check: {name} model on {rows.num_rows:,} rows of {split}")
        table = pq.read_table(run_simulation(rows, plan.out / "fit_check" / name, p, pool, log))
        cells = group_cells(table.to_pylist(), ranges=ranges)
        m = scores(cells, truth, row_truth)
        models[name] = FitScores(m.wasserstein, m.cell_spread, m.vs_truth)
    if anchor is not None:
        models["anchor"] = FitScores(model_metrics(group_cells(predict_anchor(anchor, rows).to_pylist(), ranges=ranges)).wasserstein)
    baselines = baseline_metrics(cells, truth, 1, plan.seed)
    return FitCheck(split=split, rows=rows.num_rows, cells=m.cells, models=models, uniform=baselines.uniform.wasserstein,
                    true_floor=baselines.true_floor.wasserstein if baselines.true_floor else None)


def parity_pass(plan: EvaluationPlan, setting: str, passes: dict[str, SimulationPass], anchor: Any,
                ranges: dict[CellKey, tuple[float, float]], pool: ReplicaPool | None, log: Callable[[str], None]) -> ParityCheck:
    """Demographic parity on the eval split's largest cells, scored with (up to parity_per_cell) all their answers."""
    rows = largest_cells(plan.prepared, setting, "eval", plan.parity_cells, plan.parity_per_cell, plan.seed)
    fields = list(plan.parity_fields)
    cells: dict[str, dict[CellKey, Cell]] = {}
    for name, p in passes.items():
        log(f"evaluate: {setting}: parity check: {name} model on {rows.num_rows:,} rows of the {plan.parity_cells} largest cells")
        table = pq.read_table(run_simulation(rows, plan.out / setting / "parity" / name, p, pool, log))
        cells[name] = group_cells(table.to_pylist(), fields, ranges)
    if anchor is not None:
        cells["anchor"] = group_cells(predict_anchor(anchor, rows).to_pylist(), fields, ranges)
    return parity_check(cells, fields, f"{setting}/eval")


def largest_cells(prepared: str, setting: str, split: str, n_cells: int, per_cell: int | None, seed: int) -> pa.Table:
    """The rows of the n_cells cells of a split with the most answers (at most per_cell rows each; ties
    broken at random by seed): the fit check's (on train) and the parity check's (on eval). Big cells,
    because a cell's answers are what a model is compared with: against a dozen answers even the true
    distributions are far from the sample, and a subgroup of one or two people has no mean worth comparing."""
    table = load_split_rows(prepared, setting, split, per_cell, seed)
    keys = list(zip(table["study_id"].to_pylist(), table["condition_num"].to_pylist(), table["task_num"].to_pylist()))
    sizes: dict[tuple, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    distinct = sorted(sizes)
    tiebreak = np.random.default_rng(seed).permutation(len(distinct))
    ranked = sorted(range(len(distinct)), key=lambda i: (-sizes[distinct[i]], tiebreak[i]))
    chosen = {distinct[i] for i in ranked[:n_cells]}
    return table.take(pa.array([i for i, k in enumerate(keys) if k in chosen]))
