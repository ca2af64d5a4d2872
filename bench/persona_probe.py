"""Does a finetuned adapter read the persona, not only the stimulus? A counterfactual probe.

    .venv/bin/python bench/persona_probe.py --run runs/demo --prepared runs/demo/prepared

For rows of one setting's eval split (held-out cells, bounded scales of at most 11 points), the
persona's party and ideology lines are set to "Strong Democrat" / "Very Liberal" and then to
"Strong Republican" / "Very Conservative", everything else kept. The model's predicted mean
position (0..1 on the scale) under each gives a per-row partisan gap; averaged per cell, it is
correlated with the humans' own gap in that cell (mean position of participants whose party
names the Democrats minus those naming the Republicans). A model that ignores the persona gives
gaps of 0; one that reads it gives gaps that follow the humans' (positive correlation).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.eval.job import chosen_adapter
from socrates_ray.score import Scorer
from socrates_ray.eval.simulate import load_split_rows

SIDES = {"democrat": ("Strong Democrat", "Very Liberal"), "republican": ("Strong Republican", "Very Conservative")}


def with_side(prompt: str, side: str) -> str:
    party, ideology = SIDES[side]
    prompt = re.sub(r"^- Party Id: .*$", f"- Party Id: {party}", prompt, flags=re.M)
    return re.sub(r"^- Ideology: .*$", f"- Ideology: {ideology}", prompt, flags=re.M)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run folder (its newest exported adapter is probed)")
    p.add_argument("--prepared", required=True)
    p.add_argument("--model", default=None, help="base model folder (default: <run>/config.yaml's model.path)")
    p.add_argument("--setting", default="unseen_conditions")
    p.add_argument("--per-cell", type=int, default=12)
    p.add_argument("--temperature", type=float, default=1.0)
    a = p.parse_args()
    import yaml

    model = a.model or yaml.safe_load(Path(a.run, "config.yaml").read_text())["model"]["path"]
    adapter = chosen_adapter(Path(a.run))
    if adapter is None:
        raise SystemExit(f"no exported adapter under {a.run}/checkpoint_*/export")
    rows = [r for r in load_split_rows(a.prepared, a.setting, "eval", None).to_pylist()
            if r["scale_low"] is not None and 0 < r["scale_high"] - r["scale_low"] <= 10 and "- Party Id: " in r["prompt"]]
    by_cell: dict[tuple, list[dict]] = {}
    for r in rows:
        by_cell.setdefault((r["study_id"], r["condition_num"], r["task_num"]), []).append(r)
    human_gap, probe = {}, []
    for key, cell in by_cell.items():
        pos = lambda r: (r["response"] - r["scale_low"]) / (r["scale_high"] - r["scale_low"])  # noqa: E731
        dem = [pos(r) for r in cell if "Democrat" in (r["demographic"].get("party_id") or "")]
        rep = [pos(r) for r in cell if "Republican" in (r["demographic"].get("party_id") or "")]
        if len(dem) >= 3 and len(rep) >= 3:
            human_gap[key] = float(np.mean(dem) - np.mean(rep))
            probe.extend((key, r) for r in cell[: a.per_cell])
    scorer = Scorer(model, DEFAULT_SYSTEM_PROMPT)
    scorer.load_adapter("probe", adapter)
    options = [list(range(r["scale_low"], r["scale_high"] + 1)) for _, r in probe]
    means = {}
    for side in SIDES:
        dists = scorer.distributions([with_side(r["prompt"], side) for _, r in probe], options, adapter="probe", temperature=a.temperature)
        means[side] = [float(np.dot(d, (np.asarray(o) - o[0]) / (o[-1] - o[0]))) for d, o in zip(dists, options)]
    gaps: dict[tuple, list[float]] = {}
    for (key, _), d, r in zip(probe, means["democrat"], means["republican"]):
        gaps.setdefault(key, []).append(d - r)
    keys = sorted(gaps)
    model_gap = np.array([np.mean(gaps[k]) for k in keys])
    humans = np.array([human_gap[k] for k in keys])
    print(f"{a.setting}/eval: {len(probe)} rows in {len(keys)} cells; predicted Democrat-minus-Republican gap "
          f"(mean position): mean {model_gap.mean():+.3f}, mean |gap| {np.abs(model_gap).mean():.3f}; humans' gap mean "
          f"{humans.mean():+.3f}, mean |gap| {np.abs(humans).mean():.3f}; corr(predicted, humans) across cells "
          f"{np.corrcoef(model_gap, humans)[0, 1]:+.2f}; same sign in {np.mean(np.sign(model_gap) == np.sign(humans)):.0%} of cells")


if __name__ == "__main__":
    main()
