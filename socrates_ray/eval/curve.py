"""The learning curve's evaluation: adapters trained on growing shares of each study's participants,
scored on the same held-out participants (unseen_participants).

curves.py prepares and trains one run per fraction; `build_curve` turns those runs into a
CurvePlan of plain values and `run_curve` scores them: the held-out participants are those no run
trained on or validated with (the larger fractions' train sets contain the smaller ones', so this
is the largest run's eval split less any participant a smaller run added to cover a condition),
each cell rescaled by the range of all its held-out humans; the base model, the uniform guess and
per run the regression anchor fitted on that run's rows are scored on the same rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import Config
from socrates_ray.data.prepared import has_rows, load_split_rows, ranges_of, read_split, subsample_cells
from socrates_ray.data.splits import PARTICIPANTS
from socrates_ray.eval.anchor import fit_anchor, predict_anchor
from socrates_ray.eval.calibrate import CalibrationSplit, resolve_temperature
from socrates_ray.eval.metrics import baseline_metrics, group_cells, model_metrics
from socrates_ray.eval.passes import SimulationPass, build_pass
from socrates_ray.eval.replica import ReplicaPool
from socrates_ray.eval.results import CurvePoint, CurveResult, FitScores, to_json
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.infer import engine_spec
from socrates_ray.plots import Figure, new_figure, save_png


@dataclass(frozen=True)
class CurveRun:
    """One fraction's run, as the orchestrator left it."""

    fraction: float
    prepared: str  # its prepared folder (unseen_participants at this fraction)
    adapter: str  # its exported adapter


@dataclass(frozen=True)
class CurvePlan:
    runs: tuple[CurveRun, ...]
    base: SimulationPass  # the base model at T = 1 until its temperature is resolved
    adapter_pass: SimulationPass  # the template every run's adapter is scored with (its name and path replaced)
    temperature: float | str  # simulate.temperature
    calibration_rows: int
    max_per_cell: int | None
    seed: int
    anchor: bool
    out: Path


def _people(table: pa.Table) -> set[tuple[str, int]]:
    return set(zip(table["study_id"].to_pylist(), table["participant"].to_pylist()))


def held_out_rows(runs: tuple[CurveRun, ...]) -> pa.Table:
    """The largest run's eval rows whose participants no run trained on or validated with."""
    largest = max(runs, key=lambda r: r.fraction)
    rows = load_split_rows(largest.prepared, PARTICIPANTS, "eval")
    used: set[tuple[str, int]] = set()
    for run in runs:
        for split in ("train", "val"):
            if has_rows(run.prepared, PARTICIPANTS, split):
                used |= _people(read_split(run.prepared, PARTICIPANTS, split, ["study_id", "participant"]))
    keep = [(s, p) not in used for s, p in zip(rows["study_id"].to_pylist(), rows["participant"].to_pylist())]
    return rows.filter(pa.array(keep))


def run_curve(plan: CurvePlan, log: Callable[[str], None] = print) -> CurveResult:
    """Score every run, the base model, the uniform guess and the anchor on the same held-out participants."""
    import time

    start = time.perf_counter()
    everyone = held_out_rows(plan.runs)
    ranges = ranges_of(everyone)
    rows = subsample_cells(everyone, plan.max_per_cell, plan.seed)
    log(f"curve: {len(plan.runs)} runs scored on {rows.num_rows:,} rows of {len(_people(everyone)):,} participants no run trained on")
    names = {run.fraction: "f" + f"{run.fraction:g}".replace(".", "_") for run in plan.runs}
    adapters = {names[run.fraction]: run.adapter for run in plan.runs}
    b = plan.base
    with ReplicaPool(b.model_path, b.system_prompt, adapters, b.replicas) as pool:
        largest = max(plan.runs, key=lambda r: r.fraction)
        t, _ = resolve_temperature(plan.temperature, b, CalibrationSplit(largest.prepared, PARTICIPANTS, plan.calibration_rows, plan.seed),
                                   plan.out / "calibration" / "base", log, pool)
        table = pq.read_table(run_simulation(rows, plan.out / "base", b.at_temperature(t), pool, log))
        cells = group_cells(table.to_pylist(), ranges=ranges)
        base = model_metrics(cells)
        uniform = baseline_metrics(cells, None, 1, plan.seed).uniform
        result = CurveResult(PARTICIPANTS, rows.num_rows, len(_people(rows)), base.cells, FitScores(base.wasserstein, base.cell_spread),
                             base.accuracy, uniform.wasserstein, uniform.accuracy)
        for run in sorted(plan.runs, key=lambda r: r.fraction):
            name = names[run.fraction]
            template = dataclasses.replace(plan.adapter_pass, adapter_path=run.adapter, adapter_name=name)
            t, _ = resolve_temperature(plan.temperature, template, CalibrationSplit(run.prepared, PARTICIPANTS, plan.calibration_rows, plan.seed),
                                       plan.out / "calibration" / name, log, pool)
            scored = model_metrics(group_cells(pq.read_table(run_simulation(rows, plan.out / name, template.at_temperature(t), pool, log)).to_pylist(),
                                               ranges=ranges))
            train = load_split_rows(run.prepared, PARTICIPANTS, "train")
            point = CurvePoint(run.fraction, len(_people(train)), train.num_rows, run.adapter, t, scored.wasserstein, scored.accuracy)
            if plan.anchor:
                val = load_split_rows(run.prepared, PARTICIPANTS, "val") if has_rows(run.prepared, PARTICIPANTS, "val") else train
                anchored = model_metrics(group_cells(predict_anchor(fit_anchor(train, val), rows).to_pylist(), ranges=ranges))
                point.anchor_wasserstein, point.anchor_accuracy = anchored.wasserstein, anchored.accuracy
            result.points.append(point)
            log(f"curve: {run.fraction:.0%} of participants ({point.participants:,}, {point.rows:,} rows): W {fmt(point.wasserstein)}, "
                f"accuracy {fmt(point.accuracy)}; anchor W {fmt(point.anchor_wasserstein)}, accuracy {fmt(point.anchor_accuracy)}")
    result.seconds = round(time.perf_counter() - start, 1)
    result.report = str(write_curve_report(result, plan.out))
    return result


def fmt(v: float | None) -> str:
    """A figure for tables and log lines: 4 decimals, "-" where there is none."""
    return "-" if v is None else f"{v:.4f}"


def curve_table(r: CurveResult) -> str:
    lines = ["| participants trained on | people | rows | W finetuned | W anchor | accuracy finetuned | accuracy anchor | T |",
             "|---|---|---|---|---|---|---|---|"]
    for p in r.points:
        lines.append(f"| {p.fraction:.0%} | {p.participants:,} | {p.rows:,} | {fmt(p.wasserstein)} | {fmt(p.anchor_wasserstein)} | "
                     f"{fmt(p.accuracy)} | {fmt(p.anchor_accuracy)} | {p.temperature:.2f} |")
    lines.append(f"| base model | - | - | {fmt(r.base.wasserstein)} | - | {fmt(r.base_accuracy)} | - | - |")
    lines.append(f"| uniform guess | - | - | {fmt(r.uniform_wasserstein)} | - | {fmt(r.uniform_accuracy)} | - | - |")
    return "\n".join(lines)


def plot_curve(r: CurveResult, path: Path | None = None) -> Figure:
    """W and individual accuracy against the share of participants trained on (log scale)."""
    fig, axes = new_figure(10, 3.8, 1, 2)
    x = [p.fraction for p in r.points]
    for ax, (label, tuned, anchor, base, uniform) in zip(axes[0], (
        ("Wasserstein (lower is better)", [p.wasserstein for p in r.points], [p.anchor_wasserstein for p in r.points],
         r.base.wasserstein, r.uniform_wasserstein),
        ("individual accuracy (higher is better)", [p.accuracy for p in r.points], [p.anchor_accuracy for p in r.points],
         r.base_accuracy, r.uniform_accuracy),
    )):
        ax.plot(x, tuned, marker="o", label="finetuned")
        if any(v is not None for v in anchor):
            ax.plot(x, anchor, marker="s", linestyle="--", label="regression anchor")
        for value, name, style in ((base, "base model", ":"), (uniform, "uniform guess", "-.")):
            if value is not None:
                ax.axhline(value, color="grey", linestyle=style, label=name)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:.0%}" for v in x])
        ax.set_xlabel("share of each study's participants trained on")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return save_png(fig, path)


def write_curve_report(r: CurveResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(to_json(r))
    plot_curve(r, out / "curve.png")
    text = [f"# Learning curve on {r.setting}", "",
            f"Every run scored on the same {r.eval_rows:,} rows of {r.eval_participants:,} participants that no run trained on "
            f"({r.cells} cells; each cell rescaled by the range of all its held-out humans). W: Wasserstein to the humans' "
            "answers; accuracy: 1 - the mean distance between each person's answer and the model's, both on the cell's 0-1 range.",
            "", curve_table(r), "", "![learning curve](curve.png)", ""]
    path = out / "curve.md"
    path.write_text("\n".join(text))
    return path


def build_curve(cfg: Config, model_path: str, runs: list[CurveRun], out: Path) -> CurvePlan:
    """The builder: simulate.* and evaluate.anchor -> the plain values run_curve scores with."""
    sim = cfg.simulate
    placeholder = 1.0 if sim.temperature == "auto" else None
    spec = engine_spec(cfg.model)
    base = build_pass(sim, model_path, cfg.prompt.system_prompt, spec, temperature=placeholder)
    tuned = build_pass(sim, model_path, cfg.prompt.system_prompt, spec, adapter_path=runs[0].adapter, adapter_name="curve",
                       temperature=placeholder)
    return CurvePlan(runs=tuple(runs), base=base, adapter_pass=tuned, temperature=sim.temperature, calibration_rows=sim.calibration_rows,
                     max_per_cell=sim.max_per_cell, seed=cfg.run.seed, anchor=cfg.evaluate.anchor, out=out)
