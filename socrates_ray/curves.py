"""`socrates-ray curve`: how much of a study's data does the model need? (the paper's unseen-participants
learning curve: gains saturate near a tenth of the participants).

For each share in curve.fractions: prepare unseen_participants with that share of each study's
participants in training (its own prepared folder under the curve's output), finetune an adapter on
it (its own run, `<run.name>-curve-f<share>`: re-running resumes or skips finished runs), then score
every adapter, the base model, the uniform guess and per share the regression anchor on the same
held-out participants (eval/curve.py). Writes curve.json, curve.md and curve.png.
"""

from __future__ import annotations

from pathlib import Path

from socrates_ray import api
from socrates_ray.config import Config, ConfigError, derive
from socrates_ray.data.prepared import PREPARED_SUMMARY
from socrates_ray.eval.curve import CurveRun, build_curve, curve_table, run_curve
from socrates_ray.eval.results import CurveResult


def curve_dir(cfg: Config) -> Path:
    return Path(cfg.curve.output_dir) if cfg.curve.output_dir else cfg.run_dir / "curve"


def run_learning_curve(cfg: Config) -> CurveResult:
    out = curve_dir(cfg)
    path = api.model_path(cfg)  # built once (from data.prepared's words when it exists), shared by every run
    runs = []
    for fraction in sorted(cfg.curve.fractions):
        tag = f"f{fraction:g}"
        prepared = out / f"prepared_{tag}"
        run = derive(cfg, [f"data.prepared={prepared}", "data.settings=[unseen_participants]", f"data.participant_fraction={fraction}",
                           "train.setting=unseen_participants", f"run.name={cfg.run.name}-curve-{tag}", f"train.epochs={cfg.curve.epochs}"])
        print(f"curve: {fraction:.0%} of each study's participants -> run {run.run.name}")
        if not (prepared / PREPARED_SUMMARY).is_file():  # a prepared share is kept: a re-run resumes from the first unfinished step
            api.prepare(run)
        api.train(run)
        adapter = api.finetuned_adapter(run)
        if adapter is None:
            raise ConfigError(f"curve: run {run.run.name} left no adapter export under {run.run_dir}; see its progress.log")
        runs.append(CurveRun(fraction, str(prepared), adapter))
    result = run_curve(build_curve(cfg, path, runs, out))
    print("curve: learning curve on held-out participants\n" + curve_table(result))
    print(f"curve: report {result.report}, plot {out / 'curve.png'} ({result.seconds:.0f}s scoring)")
    return result
