"""`socrates-ray demo`: the whole flow on the embedded default, through the same calls a user makes.

    synth (or data.raw's own dataset) -> prepare -> finetune (its tokenizing pass reports the ingest
    figures) -> evaluate base and finetuned (batch simulation, one pool of replicas) -> Serve, checked
    to answer what the evaluation scored -> a verdict a line a setting, demo_summary.json
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray import api
from socrates_ray.config import Config
from socrates_ray.data.prepared import load_split_rows
from socrates_ray.data.synthetic_files import foreign_parquet
from socrates_ray.eval.job import FINETUNED, build_evaluation, run_evaluation
from socrates_ray.eval.passes import SimulationPass
from socrates_ray.eval.report import fit_check_line
from socrates_ray.eval.results import EvaluationResult, SettingResult
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.runtime import ensure_ray
from socrates_ray.serve.app import build_app, serve_launch, start_serve

SERVE_CHECK_ROWS = 64  # a model: 128 HTTP requests, ~5 s on 2 cores after the app's ~18 s start


def synth_unless_given(cfg: Config) -> dict[str, Any]:
    """The demo's data: synthetic, written to data.raw, unless data.raw already holds a dataset synth did
    not write (a URL, or a folder of Parquet files without synth's summary): then the demo runs on it as it is."""
    raw = str(cfg.data.raw)
    given = "://" in raw or foreign_parquet(raw)
    if not given:
        return api.synth(cfg, raw)
    what = "a URL" if "://" in raw else f"{len(given)} Parquet file(s) synth did not write"
    print(f"demo: data.raw={raw} holds {what}: the demo runs on that dataset as it is (no synthetic data; no "
          "true-distribution floor unless it has a ground_truth.parquet)")
    return {"skipped": "data.raw holds a dataset synth did not write", "raw": raw}


def setting_verdict(setting: str, r: SettingResult) -> str:
    """One line: the finetuned model's W against base, uniform and the anchor, the gap it closes, and
    (synthetic data) how far it is from the truth and whether it reads the persona."""
    models = r.models
    w = {name: m.wasserstein for name, m in models.items()}
    gap = r.comparison.gap_closed("finetuned")
    anchor = f" vs anchor {w['anchor']:.4f}" if "anchor" in w else ""
    truth = {name: m.vs_truth.removed for name, m in models.items() if m.vs_truth}
    to_truth = (f"; against the true distributions it removes {truth['finetuned']:.0%} of uniform's distance"
                + (f" (anchor {truth['anchor']:.0%})" if "anchor" in truth else "")) if "finetuned" in truth else ""
    persona = {name: m.persona_reading for name, m in models.items()}
    if persona.get("finetuned") is not None:
        to_truth += f"; persona reading {persona['finetuned']:+.2f}" + (
            f" (anchor {persona['anchor']:+.2f})" if persona.get("anchor") is not None else "")
    floor = ""
    if r.comparison.floor_used_for_gap == "floor":  # no true distributions: the resampling floor
        n = r.baselines.floor.answers_per_cell
        floor = f" (resampling floor, median {n} answers a cell{'; past it: see the note above' if gap is not None and gap > 1 else ''})"
    acc = {name: m.accuracy for name, m in models.items()}
    accuracy = (f"; individual accuracy finetuned {acc['finetuned']:.3f} vs uniform {r.baselines.uniform.accuracy:.3f}"
                + (f", anchor {acc['anchor']:.3f}" if acc.get("anchor") is not None else "")) if acc.get("finetuned") is not None else ""
    parity = ""
    if r.parity is not None:
        parity = (f"; subgroup gap error on the {r.parity.cells} largest cells "
                  + ", ".join(f"{n} {v:.3f}" for n, v in r.parity.errors.items() if v is not None))
    return (f"{setting}: finetuned {w['finetuned']:.4f} vs base {w['base']:.4f} vs uniform {r.baselines.uniform.wasserstein:.4f}{anchor}; "
            f"finetuned closes {gap:.0%} of the uniform-to-floor gap{floor}{to_truth}{accuracy}{parity}")


def serve_matches_evaluation(cfg: Config, path: str, adapter: str, results: EvaluationResult, token: str | None = None) -> dict[str, Any]:
    """Deploy the Serve app with the finetuned adapter and score the fit check's rows through HTTP
    (base and finetuned, each at its fitted temperature): the endpoint must answer the distributions
    the evaluation scored. Returns the largest probability difference and a line for the verdict."""
    from ray import serve

    eval_dir = Path(results.report).parent
    # the fit check's rows (train split of train.setting), else the first setting's (its eval split)
    sources = [(eval_dir / "fit_check", cfg.train.setting, "train"), *((eval_dir / s, s, "eval") for s in results.settings)]
    source, setting, split = next(s for s in sources if s[0].is_dir())
    inputs = load_split_rows(cfg.data.prepared, setting, split)
    plan = build_evaluation(cfg, path, adapter)
    rows, biggest = 0, 0.0
    try:
        url = start_serve(build_app(cfg, path, {FINETUNED: adapter}), serve_launch(cfg))
        for name, p in plan.passes.items():
            scored = pq.read_table(source / name / "predictions.parquet")
            scored = scored.take(list(range(0, scored.num_rows, -(-scored.num_rows // SERVE_CHECK_ROWS))))  # <= SERVE_CHECK_ROWS
            keys = set(zip(scored["study_id"].to_pylist(), scored["sample_id"].to_pylist()))
            asked = inputs.filter(pa.array([k in keys for k in zip(inputs["study_id"].to_pylist(), inputs["sample_id"].to_pylist())]))
            served = pq.read_table(run_simulation(asked, eval_dir / "serve_check" / name, through(p, url, token, results.temperature[name]),
                                                  log=lambda *_: None))
            want = {(r["study_id"], r["sample_id"]): r["probs"] for r in scored.select(["study_id", "sample_id", "probs"]).to_pylist()}
            for r in served.select(["study_id", "sample_id", "probs"]).to_pylist():
                if r["probs"] is not None:
                    biggest = max(biggest, float(np.abs(np.asarray(r["probs"]) - np.asarray(want[(r["study_id"], r["sample_id"])])).max()))
                    rows += 1
    finally:
        serve.shutdown()
    line = (f"Serve app ({url}, adapter '{FINETUNED}') answered {rows:,} requests ({source.name} rows) as the evaluation "
            f"scored them: largest probability difference {biggest:.4f}")
    return {"url": url, "rows": rows, "max_abs_diff": biggest, "line": line}


def through(p: SimulationPass, url: str, token: str | None, temperature: float) -> SimulationPass:
    """The evaluation's pass of one model, answered by the Serve app at `url` instead."""
    return dataclasses.replace(p.at_temperature(temperature), endpoint=url, token=token)


def run_demo(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole flow; the demo's summary (also in <run>/demo_summary.json)."""
    started = time.time()
    out = cfg.run_dir
    log(f"demo: run folder {out}")
    ensure_ray(cfg)
    synth = synth_unless_given(cfg)
    prepared = api.prepare(cfg)
    # ingest.materialize: training's one tokenizing pass reports the ingest figures (no pass of its own)
    ingest = None if cfg.ingest.materialize else api.ingest(cfg, f"{cfg.train.setting}/train")
    trained = api.train(cfg)
    ingest = ingest or json.loads((trained.run_dir / "ingest_stats.json").read_text())
    path = api.model_path(cfg)
    adapter = api.finetuned_adapter(cfg)
    # The batch path (a pool of model replicas, kept for every pass): 2-3x the rows/s of one HTTP request a row
    # on 2 cores, and how whole studies are simulated at scale. Serve is checked against it below.
    results = run_evaluation(build_evaluation(cfg, path, adapter))
    serve_check = serve_matches_evaluation(cfg, path, adapter, results, token=api.serve_token(cfg))
    verdicts = [setting_verdict(setting, r) for setting, r in results.settings.items()]
    verdicts.append(serve_check["line"])
    summary = {"synth": synth, "prepare": prepared, "ingest": ingest,
               "train": {"checkpoint": trained.checkpoint, "run_dir": str(trained.run_dir)},
               "evaluate": {"report": results.report, "metrics": str(Path(results.report).parent / "metrics.json")},
               "serve_check": serve_check, "seconds": round(time.time() - started, 1)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if cfg.simulate.mode == "exact" and results.temperature:
        how = "fitted on the validation split" if cfg.simulate.temperature == "auto" else "from simulate.temperature"
        verdicts.append("exact-mode temperature " + ", ".join(f"{k} {v:.2f}" for k, v in results.temperature.items()) + f" ({how})")
    if line := fit_check_line(results):
        verdicts.append(line)
    log("demo: " + "\ndemo: ".join(verdicts))
    log(f"demo: done in {time.time() - started:,.0f}s; report {results.report}; training run {trained.run_dir}")
    return summary
