"""How learnable is a synthetic world? synth -> prepare (one process, no Ray) -> the regression anchor
-> its share of the uniform-to-true-floor gap on unseen studies and unseen conditions, in ~30 s.

    .venv/bin/python bench/world_probe.py --seed 0 --studies 160          # the demo world
    .venv/bin/python bench/world_probe.py --seed 0 --studies 80           # the former one
    .venv/bin/python bench/world_probe.py --seed 0 --set VISIBLE_SCALE=3  # a generator constant changed

The anchor is a ridge regression on persona fields and stimulus words (socrates_ray/eval/anchor.py);
a world where it cannot beat uniform on held-out units is a world where nothing shared across
studies moves the answers, and an LLM finetuned on it has nothing to learn either. Scored like
`socrates-ray evaluate` (configs/demo.yaml's simulate.max_per_cell participants a cell, unless
--per-cell says otherwise).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import socrates_ray.data.synthetic as synthetic
from socrates_ray.eval.anchor import fit_anchor, predict_anchor
from socrates_ray.config import load_config
from socrates_ray.data.prepare import run_prepare
from socrates_ray.eval.job import _val_or_train, load_truth
from socrates_ray.eval.metrics import baseline_metrics, gap_closed, group_cells, model_metrics, truth_distance
from socrates_ray.eval.simulate import load_split_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--studies", type=int, default=None, help="default: the config's synth.studies")
    parser.add_argument("--rows", type=int, default=None, help="default: the config's synth.rows")
    parser.add_argument("--per-cell", type=int, default=None, help="default: the config's simulate.max_per_cell")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override a constant of data/synthetic.py")
    parser.add_argument("--out", default="runs/world_probe")
    args = parser.parse_args()
    for item in args.set:
        name, value = item.split("=", 1)
        if not isinstance(getattr(synthetic, name, None), (int, float)):
            parser.error(f"--set {item}: data/synthetic.py has no numeric constant {name}")
        setattr(synthetic, name, float(value))
    cfg = load_config(args.config, [f"synth.seed={args.seed}"])
    studies, rows = args.studies or cfg.synth.studies, args.rows or cfg.synth.rows
    per_cell = args.per_cell or cfg.simulate.max_per_cell
    out = Path(args.out) / f"seed{args.seed}_studies{studies}_rows{rows}"
    started = time.time()
    s = cfg.synth
    synthetic.write_synthetic(out / "synth", studies, rows, s.rows_per_shard, args.seed, s.refusal_rate, s.within_subject_share)
    cfg = load_config(args.config, [f"data.raw={out}/synth", f"data.prepared={out}/prepared", "data.parallelism=1"])
    run_prepare(cfg, log=lambda *_: None)
    setting = cfg.train.setting
    anchor = fit_anchor(load_split_rows(cfg.data.prepared, setting, "train", None), _val_or_train(cfg.data.prepared, setting))
    truth = load_truth(cfg.data.raw)
    print(f"world: seed {args.seed}, {studies} studies, ~{rows:,} rows {' '.join(args.set)}; anchor alpha {anchor.alpha:g}, "
          f"spread {anchor.spread:g} (fitted on {setting}/train); {time.time() - started:.0f}s")
    for name in ("unseen_studies", "unseen_conditions"):
        cells = group_cells(predict_anchor(anchor, load_split_rows(cfg.data.prepared, name, "eval", per_cell, cfg.run.seed)).to_pylist())
        m, b = model_metrics(cells), baseline_metrics(cells, truth, 5, cfg.run.seed)
        gap = gap_closed(m["wasserstein"], b["uniform"]["wasserstein"], b["true_floor"]["wasserstein"])
        removed = truth_distance(cells, truth)["removed"]
        print(f"  {name}: anchor W {m['wasserstein']:.4f}, uniform {b['uniform']['wasserstein']:.4f}, true floor "
              f"{b['true_floor']['wasserstein']:.4f} ({per_cell} a cell): gap closed {gap:.2f}; uniform's distance to the "
              f"truth removed {removed:.2f}; cell spread {m['cell_spread']['predicted']:.3f} vs humans {m['cell_spread']['human']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
