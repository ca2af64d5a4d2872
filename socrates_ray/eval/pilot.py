"""Pilot studies measured: held-out studies replayed as pilots of k participants, and the report of
one researcher's pilot.

The replay (`socrates-ray pilot --from-split unseen_studies`): per held-out study, its participants
are shuffled by the seed; a pilot of k takes the first k (so a larger pilot contains the smaller
ones) and every k is scored on the same people, those after the largest pilot. k = 0 is the general
adapter itself; each k > 0 is one adapter per study, the general adapter trained further on that
study's pilot (pilot.py trains them). Beside them, on the same rows: the uniform guess and, per k,
the regression anchor fitted on the general adapter's training split plus every study's pilot of k.
Each cell is rescaled by the range of all its scored humans.

`choose_pilots` is the plan, `score_replay` the scoring (after training), `pilot_cells` and
`write_pilot_report` the researcher's report.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.data.prepared import ranges_of
from socrates_ray.data.prompts import parse_answer_scale
from socrates_ray.eval.anchor import fit_anchor, predict_anchor
from socrates_ray.eval.curve import fmt
from socrates_ray.eval.metrics import baseline_metrics, group_cells, model_metrics
from socrates_ray.eval.passes import SimulationPass
from socrates_ray.eval.replica import ReplicaPool
from socrates_ray.eval.results import PilotCell, PilotPoint, PilotReplay, PilotResult, to_json
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.plots import Figure, new_figure, save_png

GENERAL = "general"  # the general adapter's name in the replay's replica pool


@dataclass(frozen=True)
class StudyPilots:
    """One held-out study of the replay: its pilots by size and the people no pilot holds."""

    study_id: str
    pilots: dict[int, tuple[int, ...]]  # k -> participant ids
    held_out: tuple[int, ...]


def choose_pilots(rows: pa.Table, sizes: list[int], min_held_out: int, count: int, seed: int) -> tuple[list[StudyPilots], dict[str, str]]:
    """The studies to replay (those keeping min_held_out people beyond the largest pilot, the
    largest `count` of them) and why each other study was left out."""
    largest = max(sizes)
    people: dict[str, list[int]] = {}
    for study, person in zip(rows["study_id"].to_pylist(), rows["participant"].to_pylist()):
        people.setdefault(study, []).append(person)
    chosen: list[StudyPilots] = []
    skipped: dict[str, str] = {}
    ranked = sorted(people, key=lambda s: (-len(set(people[s])), s))
    for study in ranked:
        ids = sorted(set(people[study]))
        if len(ids) < largest + min_held_out:
            skipped[study] = f"{len(ids)} participants: fewer than the largest pilot ({largest}) + pilot.min_held_out ({min_held_out})"
            continue
        if len(chosen) == count:
            skipped[study] = f"beyond pilot.studies ({count})"
            continue
        rng = np.random.default_rng([seed, *study.encode()])
        order = [int(p) for p in rng.permutation(ids)]
        chosen.append(StudyPilots(study, {k: tuple(order[:k]) for k in sorted(sizes)}, tuple(order[largest:])))
    return chosen, skipped


def _select(rows: pa.Table, study: str, people: tuple[int, ...]) -> pa.Table:
    wanted = set(people)
    keep = [s == study and p in wanted for s, p in zip(rows["study_id"].to_pylist(), rows["participant"].to_pylist())]
    return rows.filter(pa.array(keep))


def pilot_rows_of(rows: pa.Table, study: StudyPilots, k: int) -> pa.Table:
    return _select(rows, study.study_id, study.pilots[k])


def held_out_rows(rows: pa.Table, studies: list[StudyPilots]) -> pa.Table:
    return pa.concat_tables([_select(rows, s.study_id, s.held_out) for s in studies])


@dataclass(frozen=True)
class ReplayPlan:
    """What score_replay needs, as plain values."""

    setting: str
    rows: pa.Table  # the held-out studies' eval rows
    studies: tuple[StudyPilots, ...]
    skipped: dict[str, str]
    adapters: dict[int, dict[str, str]]  # k -> study -> adapter folder
    general: SimulationPass  # the general adapter, at its temperature
    anchor_train: pa.Table | None  # the general adapter's training split (None: no anchor)
    anchor_val: pa.Table | None
    seed: int
    out: Path


def score_replay(plan: ReplayPlan, log: Callable[[str], None] = print) -> PilotReplay:
    start = time.perf_counter()
    scored = held_out_rows(plan.rows, list(plan.studies))
    ranges = ranges_of(scored)
    people = len(set(zip(scored["study_id"].to_pylist(), scored["participant"].to_pylist())))
    log(f"pilot: {len(plan.studies)} studies scored on {scored.num_rows:,} rows of {people:,} participants in no pilot")
    names = {GENERAL: plan.general.adapter_path}
    for k, by_study in plan.adapters.items():
        names.update({f"{study}-k{k}": path for study, path in by_study.items()})
    pilots = {k: pa.concat_tables([pilot_rows_of(plan.rows, s, k) for s in plan.studies]) for k in plan.adapters}
    g = plan.general
    with ReplicaPool(g.model_path, g.system_prompt, names, g.replicas) as pool:
        general_rows = pq.read_table(run_simulation(scored, plan.out / "scores" / "k0", g, pool, log))
        cells = group_cells(general_rows.to_pylist(), ranges=ranges)
        uniform = baseline_metrics(cells, None, 1, plan.seed).uniform
        result = PilotReplay(plan.setting, [s.study_id for s in plan.studies], scored.num_rows, people, len(cells),
                             g.decoding.temperature, uniform.wasserstein, uniform.accuracy, skipped=dict(plan.skipped))
        result.points.append(_point(0, 0, cells, {}))
        for k in sorted(plan.adapters):
            parts = []
            for study in plan.studies:
                p = dataclasses.replace(g, adapter_path=plan.adapters[k][study.study_id], adapter_name=f"{study.study_id}-k{k}")
                parts.append(pq.read_table(run_simulation(_select(scored, study.study_id, study.held_out),
                                                          plan.out / "scores" / f"k{k}" / study.study_id, p, pool, lambda _: None)))
            result.points.append(_point(k, pilots[k].num_rows, group_cells(pa.concat_tables(parts).to_pylist(), ranges=ranges),
                                        plan.adapters[k]))
    for point in result.points:
        if plan.anchor_train is not None:
            extra = [pilots[point.k].select(plan.anchor_train.column_names)] if point.k else []
            anchor = fit_anchor(pa.concat_tables([plan.anchor_train, *extra]), plan.anchor_val)
            a = model_metrics(group_cells(predict_anchor(anchor, scored).to_pylist(), ranges=ranges))
            point.anchor_wasserstein, point.anchor_accuracy = a.wasserstein, a.accuracy
        log(f"pilot: k = {point.k:>3}: W {fmt(point.wasserstein)}, accuracy {fmt(point.accuracy)}; "
            f"anchor W {fmt(point.anchor_wasserstein)}, accuracy {fmt(point.anchor_accuracy)}")
    result.seconds = round(time.perf_counter() - start, 1)
    result.report = str(write_replay_report(result, plan.out))
    return result


def _point(k: int, rows: int, cells: dict, adapters: dict[str, str]) -> PilotPoint:
    m = model_metrics(cells)
    return PilotPoint(k, rows, m.wasserstein, m.accuracy, per_study=dict(m.per_study), adapters=dict(adapters))


def replay_table(r: PilotReplay) -> str:
    lines = ["| pilot per study | pilot rows | W pilot adapters | W anchor | accuracy pilot adapters | accuracy anchor |",
             "|---|---|---|---|---|---|"]
    for p in r.points:
        who = "0 (general adapter)" if p.k == 0 else str(p.k)
        lines.append(f"| {who} | {p.rows:,} | {fmt(p.wasserstein)} | {fmt(p.anchor_wasserstein)} | {fmt(p.accuracy)} | {fmt(p.anchor_accuracy)} |")
    lines.append(f"| uniform guess | - | {fmt(r.uniform_wasserstein)} | - | {fmt(r.uniform_accuracy)} | - |")
    return "\n".join(lines)


def study_table(r: PilotReplay) -> str:
    lines = ["| study | " + " | ".join(f"W k={p.k}" for p in r.points) + " |", "|---" * (len(r.points) + 1) + "|"]
    for study in r.studies:
        lines.append(f"| {study} | " + " | ".join(fmt(p.per_study.get(study)) for p in r.points) + " |")
    return "\n".join(lines)


def expected_gain(r: PilotReplay, k: int) -> str:
    """What the replay says a pilot of k buys: W and accuracy of the nearest replayed size against k = 0."""
    sizes = [p for p in r.points if p.k > 0]
    if not sizes or r.points[0].wasserstein is None:
        return "the replay scored no pilot size"
    near = min(sizes, key=lambda p: abs(p.k - k))
    base = r.points[0]
    dw = None if near.wasserstein is None else near.wasserstein - base.wasserstein
    da = None if near.accuracy is None or base.accuracy is None else near.accuracy - base.accuracy
    return (f"on {len(r.studies)} held-out studies replayed as pilots of {near.k} (the replayed size nearest {k}), W went "
            f"{fmt(base.wasserstein)} -> {fmt(near.wasserstein)} ({'-' if dw is None else f'{dw:+.4f}'}) and accuracy "
            f"{fmt(base.accuracy)} -> {fmt(near.accuracy)} ({'-' if da is None else f'{da:+.4f}'}) on the participants in no pilot")


def plot_replay(r: PilotReplay, path: Path | None = None) -> Figure:
    fig, axes = new_figure(10, 3.8, 1, 2)
    x = [p.k for p in r.points]
    for ax, (label, tuned, anchor, uniform) in zip(axes[0], (
        ("Wasserstein (lower is better)", [p.wasserstein for p in r.points], [p.anchor_wasserstein for p in r.points], r.uniform_wasserstein),
        ("individual accuracy (higher is better)", [p.accuracy for p in r.points], [p.anchor_accuracy for p in r.points], r.uniform_accuracy),
    )):
        ax.plot(x, tuned, marker="o", label="pilot adapters (k = 0: general)")
        if any(v is not None for v in anchor):
            ax.plot(x, anchor, marker="s", linestyle="--", label="regression anchor + pilots")
        if uniform is not None:
            ax.axhline(uniform, color="grey", linestyle="-.", label="uniform guess")
        ax.set_xticks(x)
        ax.set_xlabel("pilot participants per study")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return save_png(fig, path)


def write_replay_report(r: PilotReplay, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(to_json(r))
    plot_replay(r, out / "replay.png")
    skipped = [f"- {s}: {why}" for s, why in sorted(r.skipped.items())]
    text = [f"# Pilot studies replayed on {r.setting}", "",
            f"{len(r.studies)} held-out studies, each replayed as pilots of {', '.join(str(p.k) for p in r.points[1:])} participants "
            f"(one adapter per study and size: the general adapter trained further on the pilot). Every size is scored on the same "
            f"{r.eval_rows:,} rows of {r.eval_participants:,} participants in no pilot ({r.cells} cells, each rescaled by the range "
            f"of its scored humans), at temperature {r.temperature:.2f}.", "", replay_table(r), "", "W per study:", "", study_table(r),
            "", "![pilot replay](replay.png)", "", "Studies not replayed:" if skipped else "", *skipped, ""]
    path = out / "replay.md"
    path.write_text("\n".join(text))
    return path


# ---------------------------------------------------------------------------------------------
# One researcher's pilot
# ---------------------------------------------------------------------------------------------


def design_table(rows: pa.Table) -> tuple[pd.DataFrame, dict[tuple[int, int], str]]:
    """The pilot's personas (one per participant) and each (condition, task)'s stimulus; cells asking
    for an open-ended amount are left out (no options to score)."""
    personas: dict[int, dict] = {}
    stimuli: dict[tuple[int, int], str] = {}
    for r in rows.to_pylist():
        personas.setdefault(r["participant"], {k: v for k, v in (r["demographic"] or {}).items() if v is not None})
        if parse_answer_scale(r["stimuli"]).bounded:
            stimuli.setdefault((r["condition_num"], r["task_num"]), r["stimuli"])
    return pd.DataFrame(list(personas.values())), dict(sorted(stimuli.items()))


def mean_distribution(table: pd.DataFrame) -> tuple[list[int], list[float]]:
    options = list(table["options"].iloc[0])
    return options, np.mean(np.array(list(table["probabilities"])), axis=0).tolist()


def pilot_cells(rows: pa.Table, general: pd.DataFrame, pilot: pd.DataFrame) -> list[PilotCell]:
    """Per (condition, task): the pilot's humans and both predictions, averaged over the personas.
    `general` / `pilot`: predict_table's output for design_table's grid (stimulus_name "c/t")."""
    cells = []
    answers: dict[tuple[int, int], list[int]] = {}
    for c, t, a in zip(rows["condition_num"].to_pylist(), rows["task_num"].to_pylist(), rows["response"].to_pylist()):
        answers.setdefault((c, t), []).append(a)
    for name in dict.fromkeys(general["stimulus_name"]):
        c, t = (int(v) for v in name.split("/"))
        options, g = mean_distribution(general[general["stimulus_name"] == name])
        _, p = mean_distribution(pilot[pilot["stimulus_name"] == name])
        human = answers.get((c, t), [])
        counts = [sum(1 for a in human if a == o) for o in options]
        shares = [n / max(sum(counts), 1) for n in counts]
        cells.append(PilotCell(c, t, str(general[general["stimulus_name"] == name]["stimulus"].iloc[0]), options, len(human),
                               float(np.mean(human)) if human else float("nan"), float(np.dot(options, g)), float(np.dot(options, p)),
                               shares, g, p))
    return cells


def plot_pilot(r: PilotResult, path: Path | None = None) -> Figure:
    n = len(r.cells)
    cols = min(n, 3)
    fig, axes = new_figure(4.5 * cols, 3.2 * -(-n // 3), -(-n // 3), cols)
    for ax, cell in zip(axes.flat, r.cells):
        ax.bar(cell.options, cell.human_probs, color="lightgrey", label=f"pilot humans (n={cell.humans}, mean {cell.human_mean:.2f})")
        ax.plot(cell.options, cell.general_probs, marker="o", label=f"general adapter (mean {cell.general_mean:.2f})")
        ax.plot(cell.options, cell.pilot_probs, marker="s", label=f"pilot adapter (mean {cell.pilot_mean:.2f})")
        if len(cell.options) <= 11:
            ax.set_xticks(cell.options)
        ax.set_title(f"condition {cell.condition_num}, task {cell.task_num}", fontsize=9)
        ax.set_xlabel("answer")
        ax.set_ylabel("share")
        ax.legend(fontsize=7)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return save_png(fig, path)


def _quarantined(r: PilotResult) -> str:
    if not r.quarantined:
        return "none quarantined"
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(r.quarantine_reasons.items(), key=lambda x: -x[1]))
    return f"{r.quarantined} quarantined: {why}; each with its reason in prepared/quarantine/"


def write_pilot_report(r: PilotResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(to_json(r))
    plot_pilot(r, out / "pilot.png")
    lines = ["| condition | task | pilot humans | human mean | general adapter mean | pilot adapter mean |", "|---|---|---|---|---|---|"]
    for c in r.cells:
        lines.append(f"| {c.condition_num} | {c.task_num} | {c.humans} | {c.human_mean:.2f} | {c.general_mean:.2f} | {c.pilot_mean:.2f} |")
    text = [f"# Pilot {r.name} (study {r.study_id})", "",
            f"{r.participants} participants, {r.rows:,} rows ({_quarantined(r)}). The adapter `{r.name}` continues the "
            f"general adapter ({r.general_adapter}) on them; it is at {r.adapter}, where the Serve app finds it by name. Predictions: "
            f"the mean over the pilot's personas of each model's distribution, at temperature {r.temperature:.2f}.", "",
            *lines, "", f"Expected gain: {r.expected_gain or 'run `socrates-ray pilot --from-split unseen_studies` to measure it'}.",
            "", "![pilot](pilot.png)", ""]
    path = out / "pilot.md"
    path.write_text("\n".join(text))
    return path
