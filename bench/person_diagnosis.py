"""Where does a finetuned simulator lose to the truth? A diagnosis of `evaluate`'s predictions on synthetic data.

    python bench/person_diagnosis.py runs/R/eval-all                          # one run
    python bench/person_diagnosis.py runs/R-s0/eval-all runs/R-s1/eval-all   # ... and the runs' ensemble
    python bench/person_diagnosis.py runs/R/eval-all --anchor                 # ... beside the regression anchor
    python bench/person_diagnosis.py runs/R/eval-all --anchor --stack         # ... and the two combined
    python bench/person_diagnosis.py runs/R/eval-all --fit-check              # ... and the training cells it fit

It reads each run's predictions.parquet (`socrates-ray evaluate ... simulate.max_per_cell=null` scores
every answer) and the synthetic world's truth (ground_truth.parquet, ground_truth_rows.parquet), and
prints, per held-out setting:

- cell means: the correlation over cells of the model's mean position (0-1 scale) with the truth's,
  the slope of the truth on the model (1 = the model's cell means are calibrated: it shrinks towards
  the average exactly as far as it is unsure), and the mean absolute error. A low correlation with a
  slope near 1 says the model does not know the held-out stimulus, not that it is too timid;
- persona: the persona reading (report.md's), and the spread of participants within a cell, the
  model's against the truth's (the truth's includes each participant's unobserved effect);
- party by frame (where ground_truth.parquet names each condition's frame, as data/synthetic.py
  writes it): the slope of the within-cell deviation on the party score (-1 Strong Republican ...
  +1 Strong Democrat), per frame. A partisan cue ("backed by Democratic leaders") must turn this slope
  positive and its opposite negative; a model that reads party only as a main effect has one slope
  for every frame. This is what `screen` shows as a cue's effect by party;
- W, truth removed and persona reading of the ensemble (the mean of the runs' distributions) when
  several runs are given;
- with --anchor, the same for the regression anchor (fitted here on train.setting's train split, as
  `evaluate` fits it), and with --stack the product of the first run's and the anchor's distributions,
  p ~ p_model^a x p_anchor^b, with (a, b) fitted on the first run's validation rows
  (calibration/finetuned/predictions.parquet, at temperature 1) by negative log-likelihood;
- with --fit-check, the same for the cells of the training split the evaluation's fit check scored
  (fit_check/finetuned/predictions.parquet; the runs only): a model that moves people little even
  there cannot carry the person to new cells.

The figures explain the evaluation's; they do not replace it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import load_config
from socrates_ray.data.prepared import cell_ranges, load_split_rows, read_split, val_or_train
from socrates_ray.data.synthetic_vocab import PARTY
from socrates_ray.eval.job import scores
from socrates_ray.eval.metrics import group_cells
from socrates_ray.eval.truth import load_row_truth, load_truth, people_truth

SETTINGS = ("unseen_studies", "unseen_conditions")
Key = tuple[str, int]


FIT_CHECK = "fit_check"  # evaluate's fit check: a few cells of train.setting's train split


def read_predictions(folder: str | Path, setting: str) -> list[dict[str, Any]]:
    path = Path(folder) / setting / "finetuned" / "predictions.parquet"
    if not path.is_file():
        raise SystemExit(f"person_diagnosis: {path} is missing; run `socrates-ray evaluate` with "
                         f"evaluate.output_dir={folder} first")
    return pq.read_table(path).to_pylist()


def row_key(r: dict[str, Any]) -> Key:
    return (r["study_id"], int(r["sample_id"]))


SAME_ROW = ("participant", "condition_num", "task_num", "response")  # what a prediction row must share with its prepared row


def check_world(folder: str | Path, setting: str, rows: list[dict[str, Any]], prepared: str, setting_read: str, split: str) -> None:
    """Refuse predictions made on another world: each scored row must be the prepared split's row of
    the same (study_id, sample_id). Two synth worlds share study ids and sample ids, so without this a
    run of one world is diagnosed against the other's truth, and every figure comes out wrong."""
    table = read_split(prepared, setting_read, split, ["study_id", "sample_id", *SAME_ROW])
    known = {row_key(r): tuple(r[c] for c in SAME_ROW) for r in table.to_pylist()}
    wrong = sum(known.get(row_key(r)) != tuple(r[c] for c in SAME_ROW) for r in rows)
    if wrong:
        raise SystemExit(f"person_diagnosis: {wrong:,} of {len(rows):,} rows of {Path(folder) / setting} are not the rows of "
                         f"{prepared}/{setting_read}/{split} they name (expected the same participant, condition, task and "
                         "answer); pass the run's own world: data.raw=<its synth folder> data.prepared=<its prepared folder>")


def combine(runs: list[list[dict[str, Any]]], weights: list[float], geometric: bool) -> list[dict[str, Any]]:
    """Each row of runs[0] with the runs' distributions combined: their weighted mean, or with
    `geometric` their weighted product renormalised. Rows whose options differ keep runs[0]'s."""
    others = [{row_key(r): r for r in run} for run in runs[1:]]
    out = []
    for r in runs[0]:
        parts = [r] + [o.get(row_key(r)) for o in others]
        r = dict(r)
        if all(p is not None and p["probs"] is not None and list(p["options"]) == list(r["options"]) for p in parts):
            ps = [np.clip(np.asarray(p["probs"], dtype=np.float64), 1e-12, 1.0) for p in parts]
            if geometric:
                z = sum(w * np.log(p) for w, p in zip(weights, ps))
                q = np.exp(z - z.max())
            else:
                q = sum(w * p for w, p in zip(weights, ps))
            r["probs"] = (q / q.sum()).tolist()
        out.append(r)
    return out


def positions(cell_probs: list[list[float]], cell_options: list[list[int]], lo: float, span: float) -> np.ndarray:
    return np.asarray([np.dot(p, (np.asarray(o, dtype=np.float64) - lo) / span) for p, o in zip(cell_probs, cell_options)])


def party_score(demographic: dict[str, Any] | None) -> float | None:
    value = (demographic or {}).get("party_id")
    return (3 - PARTY.index(value)) / 3 if value in PARTY else None


def diagnose(rows: list[dict[str, Any]], ranges: dict, truth: dict, row_truth: dict,
             frames: dict[tuple[str, int, int], str]) -> dict[str, Any]:
    cells = group_cells(rows, [], ranges)
    m = scores(cells, truth, row_truth)
    party = {row_key(r): party_score(r.get("demographic")) for r in rows}
    model_means, true_means = [], []
    by_frame: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for key, cell in cells.items():
        if key not in truth or cell.probs is None:
            continue
        o = np.asarray(truth[key][0], dtype=np.float64)
        lo, span = float(o.min()), float(o.max() - o.min())
        people = people_truth(cell, truth[key][0], row_truth)
        if people is None or span <= 0:
            continue
        p = positions(cell.probs, cell.options, lo, span)
        t = np.asarray([np.dot(q, (o - lo) / span) for q in people])
        model_means.append(p.mean())
        true_means.append(t.mean())
        if key in frames:
            for sid, dp, dt in zip(cell.sample_ids, p - p.mean(), t - t.mean()):
                score = party.get((key[0], int(sid)))
                if score is not None:
                    by_frame[frames[key]].append((score, dp, dt))
    pm, tm = np.asarray(model_means), np.asarray(true_means)
    persona = m.vs_truth.persona if m.vs_truth else None
    out: dict[str, Any] = {
        "wasserstein": m.wasserstein, "truth_removed": m.vs_truth.removed if m.vs_truth else None,
        "persona_reading": persona.within_cell_corr if persona else None,
        "persona_spread": persona.spread if persona else None, "true_persona_spread": persona.true_spread if persona else None,
        "cells": len(pm), "cell_mean_corr": float(np.corrcoef(pm, tm)[0, 1]),
        "cell_mean_slope": float(np.polyfit(pm, tm, 1)[0]), "cell_mean_abs_error": float(np.abs(pm - tm).mean()),
        "party_slope_by_frame": {},
    }
    for frame, v in sorted(by_frame.items()):
        a = np.asarray(v)
        if len(a) > 10 and a[:, 0].std() > 0:
            out["party_slope_by_frame"][frame] = {"rows": len(a), "model": float(np.polyfit(a[:, 0], a[:, 1], 1)[0]),
                                                  "truth": float(np.polyfit(a[:, 0], a[:, 2], 1)[0])}
    return out


def print_diagnosis(name: str, d: dict[str, Any]) -> None:
    print(f"  {name:12s} W {d['wasserstein']:.4f}  truth removed {d['truth_removed']:.3f}  persona {d['persona_reading']:+.3f} "
          f"(spread {d['persona_spread']:.3f}, truth {d['true_persona_spread']:.3f})  cell means: corr {d['cell_mean_corr']:.3f}, "
          f"slope {d['cell_mean_slope']:.2f}, |error| {d['cell_mean_abs_error']:.3f}")
    if d["party_slope_by_frame"]:
        print("               party slope by frame (model / truth): " + ", ".join(
            f"{f} {s['model']:+.3f} / {s['truth']:+.3f}" for f, s in d["party_slope_by_frame"].items()))


def fit_stack(eval_dir: str, anchor: Any, prepared: str, setting: str) -> tuple[float, float, float]:
    """(a, b, temperature): the product p_model^a x p_anchor^b that fits the validation answers best,
    on a grid; the model's calibration predictions are at temperature 1, its test predictions at T."""
    from socrates_ray.eval.anchor import predict_anchor

    folder = Path(eval_dir) / "calibration" / "finetuned"
    cal = pq.read_table(folder / "predictions.parquet").to_pylist()
    temperature = json.loads((folder / "calibration.json").read_text())["temperature"]
    val = load_split_rows(prepared, setting, "val")
    wanted = {row_key(r) for r in cal}
    val = val.filter(pa.array([k in wanted for k in zip(val["study_id"].to_pylist(), val["sample_id"].to_pylist())]))
    by = {row_key(r): r for r in predict_anchor(anchor, val).to_pylist()}
    model, reg, index = [], [], []
    for r in cal:
        x = by.get(row_key(r))
        if r["probs"] is None or x is None or x["probs"] is None or r["response"] not in r["options"] or list(x["options"]) != list(r["options"]):
            continue
        model.append(np.log(np.clip(r["probs"], 1e-12, 1)))
        reg.append(np.log(np.clip(x["probs"], 1e-12, 1)))
        index.append(list(r["options"]).index(r["response"]))

    def nll(a: float, b: float) -> float:
        total = 0.0
        for lm, la, i in zip(model, reg, index):
            z = a * lm + b * la
            z = z - z.max()
            total -= z[i] - np.log(np.exp(z).sum())
        return total / len(index)

    grid = np.round(np.arange(0.0, 2.01, 0.1), 2)
    best = min((nll(a, b), a, b) for a in grid for b in grid)
    print(f"stack: fitted on {len(index)} validation rows: p_model^{best[1]:.1f} x p_anchor^{best[2]:.1f} "
          f"(NLL {best[0]:.4f}; the model alone at T={temperature:.2f} {nll(1 / temperature, 0):.4f}, the anchor alone {nll(0, 1):.4f})")
    return float(best[1]), float(best[2]), float(temperature)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dirs", nargs="+", help="evaluate.output_dir of one or more runs on the same world")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--anchor", action="store_true", help="also diagnose the regression anchor")
    parser.add_argument("--stack", action="store_true", help="also the first run x the anchor (needs --anchor)")
    parser.add_argument("--fit-check", action="store_true", help="also the training cells of the evaluation's fit check")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("overrides", nargs="*", default=[], help="config overrides (data.raw=..., data.prepared=...)")
    args, extra = parser.parse_known_args()
    cfg = load_config(args.config, list(args.overrides) + extra)
    raw, prepared, trained_on = cfg.data.raw, cfg.data.prepared, cfg.train.setting
    truth, row_truth = load_truth(raw), load_row_truth(raw)
    if not truth or not row_truth:
        raise SystemExit(f"person_diagnosis: {raw} has no ground_truth.parquet and ground_truth_rows.parquet; "
                         "it needs a synthetic world (socrates-ray synth, or scripts/other_world.py --truth)")
    gt = pq.read_table(Path(raw) / "ground_truth.parquet")
    frames = {}
    if "frame" in gt.column_names:
        frames = {(s, int(c), int(t)): f for s, c, t, f in zip(*(gt[n].to_pylist() for n in ("study_id", "condition_num", "task_num", "frame")))}
    anchor = None
    if args.anchor:
        from socrates_ray.eval.anchor import fit_anchor

        anchor = fit_anchor(load_split_rows(prepared, trained_on, "train"), val_or_train(prepared, trained_on))
    stack = fit_stack(args.eval_dirs[0], anchor, prepared, trained_on) if args.stack and anchor is not None else None
    figures: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS + ((FIT_CHECK,) if args.fit_check else ()):
        print(setting if setting != FIT_CHECK else f"{FIT_CHECK} (cells of {trained_on}/train)")
        runs = [read_predictions(d, setting) for d in args.eval_dirs]
        for d, run in zip(args.eval_dirs, runs):
            check_world(d, setting, run, prepared, *((trained_on, "train") if setting == FIT_CHECK else (setting, "eval")))
        named = [(Path(d).parent.name or d, run) for d, run in zip(args.eval_dirs, runs)]
        # (each run's fit check may have drawn other cells: an ensemble only of runs that scored the same rows)
        if len(runs) > 1 and len({frozenset(map(row_key, run)) for run in runs}) == 1:
            named.append(("ensemble", combine(runs, [1 / len(runs)] * len(runs), geometric=False)))
        if anchor is not None and setting != FIT_CHECK:
            from socrates_ray.eval.anchor import predict_anchor

            reg = predict_anchor(anchor, load_split_rows(prepared, setting, "eval")).to_pylist()
            named.append(("anchor", reg))
            if stack is not None:
                a, b, temperature = stack
                named.append(("stacked", combine([runs[0], reg], [a * temperature, b], geometric=True)))
        figures[setting] = {}
        # each cell's human range, whatever was scored
        ranges = cell_ranges(prepared, trained_on, "train") if setting == FIT_CHECK else cell_ranges(prepared, setting, "eval")
        for name, rows in named:
            figures[setting][name] = diagnose(rows, ranges, truth, row_truth, frames)
            print_diagnosis(name, figures[setting][name])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
