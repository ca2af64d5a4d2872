"""The evaluation job: for each split setting, simulate the base model and the finetuned adapter on
the setting's eval rows (in-process replicas or through the Serve app), score both with
evaluate.py against the uniform guess and the floors, and write report.py's outputs.

Outputs in evaluate.output_dir (default <run>/eval/): <setting>/<base|finetuned>/predictions.parquet (resumable parts beside
it), metrics.json, report.md and PNG plots; with simulate.temperature=auto also
calibration/<base|finetuned>/ (the validation predictions and calibration.json: each model's fitted temperature).

serve_matches_evaluation (the demo's last stage) deploys the Serve app and checks that it answers
evaluated rows with the distributions the evaluation scored.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.eval.anchor import describe, fit_anchor, predict_anchor
from socrates_ray.eval.calibrate import resolve_temperature
from socrates_ray.config import Config, SimulateSection
from socrates_ray.data.synthetic import ROW_TRUTH_FILE
from socrates_ray.eval.metrics import RowTruth, baseline_metrics, compare, group_cells, model_metrics, truth_distance
from socrates_ray.eval.report import past_floor_note, results_table, temperature_line, write_report
from socrates_ray.eval.simulate import ReplicaPool, load_eval_rows, load_split_rows, run_simulation
from socrates_ray.score import Engine


def chosen_adapter(run_dir: Path, keep_by: str = "latest") -> str | None:
    """The exported adapter a training run folder offers: its newest checkpoint's, or with
    keep_by="eval_loss" (train.keep_by) the one whose step had the lowest eval loss in metrics.jsonl
    (checkpoints without a recorded eval loss count only when none has one)."""
    import json

    found = sorted(glob.glob(str(run_dir / "checkpoint_*" / "export" / "adapter_config.json")))
    if not found:
        return None
    if keep_by == "eval_loss" and (run_dir / "metrics.jsonl").is_file():
        losses = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("eval_loss") is not None:
                losses[record["step"]] = record["eval_loss"]
        scored = [(losses[step], path) for path in found
                  if (step := int(Path(path).parent.parent.name.removeprefix("checkpoint_"))) in losses]
        if scored:
            return os.path.dirname(min(scored)[1])
    return os.path.dirname(found[-1])


def load_truth(raw: str) -> dict[tuple[str, int, int], tuple[list[int], list[float]]] | None:
    """The synthetic data's true distribution per cell, if the raw folder has one."""
    path = Path(raw) / "ground_truth.parquet"
    if not path.is_file():
        return None
    return {
        (r["study_id"], r["condition_num"], r["task_num"]): (r["options"], r["probs"])
        for r in pq.read_table(path, columns=["study_id", "condition_num", "task_num", "options", "probs"]).to_pylist()
    }


def load_row_truth(raw: str) -> RowTruth | None:
    """The synthetic data's true distribution of every participant's answer, keyed by (study_id,
    sample_id), if the raw folder has one (datasets synthesized before it existed do not)."""
    path = Path(raw) / ROW_TRUTH_FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    return {(s, i): p for s, i, p in zip(table["study_id"].to_pylist(), table["sample_id"].to_pylist(), table["probs"].to_pylist())
            if p is not None}


def model_simulate_section(sim: SimulateSection, adapter_name: str | None, adapter_path: str | None, endpoint: str | None,
                           temperature: Any) -> SimulateSection:
    """simulate's settings for one model of a multi-model pass: local replicas know the adapter by its
    folder, the Serve app (endpoint) by its name."""
    return sim.model_copy(update={
        "adapter_path": adapter_path,
        "backend": "http" if endpoint else "local",
        "endpoint": endpoint or sim.endpoint,
        "adapter": adapter_name,
        "temperature": temperature,
    })


def run_evaluation(
    cfg: Config, model_path: str, adapter_path: str | None, log: Callable[[str], None] = print,
    endpoint: str | None = None, token: str | None = None,
) -> dict[str, Any]:
    """Evaluate base (and finetuned, when an adapter is given) on every configured setting.

    endpoint: evaluate through the running Serve app (the adapter must be registered there as
    'finetuned'); None: local replicas, one pool (base and adapter loaded) for every pass."""
    if endpoint:
        return _evaluate(cfg, model_path, adapter_path, log, endpoint, token, None)
    with ReplicaPool(cfg.simulate, model_path, cfg.prompt.system_prompt, {"finetuned": adapter_path} if adapter_path else None,
                     Engine.of(cfg.model)) as pool:
        return _evaluate(cfg, model_path, adapter_path, log, None, token, pool)


def _evaluate(
    cfg: Config, model_path: str, adapter_path: str | None, log: Callable[[str], None], endpoint: str | None,
    token: str | None, pool: ReplicaPool | None,
) -> dict[str, Any]:
    out = Path(cfg.evaluate.output_dir) if cfg.evaluate.output_dir else cfg.run_dir / "eval"
    truth = load_truth(cfg.data.raw)
    row_truth = load_row_truth(cfg.data.raw) if truth else None
    fields = list(cfg.evaluate.parity_fields)
    results: dict[str, Any] = {"model": model_path, "adapter": adapter_path, "mode": cfg.simulate.mode, "settings": {}}
    finetuned_tables: dict[str, Any] = {}
    trained_on = cfg.train.setting
    runs = [("base", None)] + ([("finetuned", adapter_path)] if adapter_path else [])

    def model_sim(name: str, adapter: str | None, temperature: Any) -> SimulateSection:
        return model_simulate_section(cfg.simulate, None if adapter is None else "finetuned", adapter, endpoint, temperature)

    # simulate.temperature=auto: one temperature per model, fitted on the validation split (never the test split)
    temperatures: dict[str, float] = {}
    for name, adapter in runs:
        temperatures[name], fit = resolve_temperature(cfg, model_sim(name, adapter, cfg.simulate.temperature), model_path,
                                                      out / "calibration" / name, log, token, pool=pool)
        if fit is not None:
            results.setdefault("calibration", {})[name] = fit
    results["temperature"] = temperatures
    anchor = None
    if cfg.evaluate.anchor:
        anchor = fit_anchor(load_split_rows(cfg.data.prepared, trained_on, "train", None),
                            _val_or_train(cfg.data.prepared, trained_on))
        results["anchor"] = {"trained_on": f"{trained_on}/train", **describe(anchor)}
        log(f"evaluate: regression anchor fitted on {trained_on}/train (ridge alpha {anchor.alpha:g}, spread {anchor.spread:g}, "
            f"chosen on the validation split)")
    for setting in cfg.evaluate.settings:
        if adapter_path and trained_on not in (setting, "all_settings"):
            log(f"evaluate: warning: the adapter was trained on train.setting={trained_on}, whose train split overlaps "
                f"{setting}'s eval split; its {setting} numbers are optimistic (train on all_settings to avoid this)")
        rows = load_eval_rows(cfg.data.prepared, setting, cfg.simulate.max_per_cell, cfg.run.seed)
        models: dict[str, Any] = {}
        for name, adapter in runs:
            sim = model_sim(name, adapter, temperatures[name])
            log(f"evaluate: {setting}: {name} model on {rows.num_rows:,} rows"
                + (f" (temperature {temperatures[name]:.2f})" if cfg.simulate.mode == "exact" else ""))
            table = pq.read_table(run_simulation(rows, out / setting / name, sim, model_path, cfg.prompt.system_prompt, log, token, pool=pool))
            cells = group_cells(table.to_pylist(), fields)
            models[name] = model_metrics(cells)
            if vs_truth := truth_distance(cells, truth, row_truth):
                models[name]["vs_truth"] = vs_truth
            if name == "finetuned":
                finetuned_tables[setting] = table
        if anchor is not None:
            anchor_cells = group_cells(predict_anchor(anchor, rows).to_pylist(), fields)
            models["anchor"] = model_metrics(anchor_cells)
            if vs_truth := truth_distance(anchor_cells, truth, row_truth):
                models["anchor"]["vs_truth"] = vs_truth
        baselines = baseline_metrics(cells, truth, cfg.evaluate.floor_resamples, cfg.run.seed)
        results["settings"][setting] = {"rows": rows.num_rows, "models": models, "baselines": baselines,
                                        "comparison": compare(models, baselines)}
    if cfg.evaluate.fit_check_cells:
        rows = training_cells(cfg.data.prepared, trained_on, cfg.evaluate.fit_check_cells, cfg.evaluate.fit_check_per_cell, cfg.run.seed)
        fit: dict[str, Any] = {"split": f"{trained_on}/train", "rows": rows.num_rows}
        for name, adapter in runs:
            log(f"evaluate: fit check: {name} model on {rows.num_rows:,} rows of {fit['split']}")
            table = pq.read_table(run_simulation(rows, out / "fit_check" / name, model_sim(name, adapter, temperatures[name]),
                                                 model_path, cfg.prompt.system_prompt, log, token, pool=pool))
            cells = group_cells(table.to_pylist())
            metrics = model_metrics(cells)
            fit[name] = {"wasserstein": metrics["wasserstein"], "cell_spread": metrics["cell_spread"]}
            if vs_truth := truth_distance(cells, truth, row_truth):
                fit[name]["vs_truth"] = vs_truth
        if anchor is not None:
            fit["anchor"] = {"wasserstein": model_metrics(group_cells(predict_anchor(anchor, rows).to_pylist()))["wasserstein"]}
        baselines = baseline_metrics(cells, truth, 1, cfg.run.seed)
        fit["uniform"] = {"wasserstein": baselines["uniform"]["wasserstein"]}
        if "true_floor" in baselines:  # synthetic data: what the true distributions score against so few answers a cell
            fit["true_floor"] = {"wasserstein": baselines["true_floor"]["wasserstein"]}
        fit["cells"] = metrics["cells"]
        results["fit_check"] = fit
    report = write_report(results, out, finetuned_tables)
    log("evaluate: Wasserstein distance, lower is better (PAPER.md section 5)\n" + results_table(results))
    if line := past_floor_note(results):
        log("evaluate: " + line)
    if line := temperature_line(results):
        log("evaluate: " + line)
    log(f"evaluate: report {report}, metrics {out / 'metrics.json'}")
    results["report"] = str(report)
    return results


def _val_or_train(prepared: str, setting: str) -> pa.Table:
    """The validation split (held-out units of train) where prepare made one, else train itself."""
    if glob.glob(os.path.join(prepared, setting, "val", "*.parquet")):
        return load_split_rows(prepared, setting, "val", None)
    return load_split_rows(prepared, setting, "train", None)


def training_cells(prepared: str, setting: str, n_cells: int, per_cell: int | None, seed: int) -> pa.Table:
    """The fit check's rows: the n_cells cells of a train split with the most answers (at most per_cell
    rows each; ties broken at random by seed). Big cells, because a cell's empirical distribution is
    what the model is compared with: at ~15 answers a cell (the demo's median is 12) even the true
    distributions score 0.24 x uniform against it, and sampling noise hides how well the model fits."""
    table = load_split_rows(prepared, setting, "train", per_cell, seed)
    keys = list(zip(table["study_id"].to_pylist(), table["condition_num"].to_pylist(), table["task_num"].to_pylist()))
    sizes: dict[tuple, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    distinct = sorted(sizes)
    tiebreak = np.random.default_rng(seed).permutation(len(distinct))
    ranked = sorted(range(len(distinct)), key=lambda i: (-sizes[distinct[i]], tiebreak[i]))
    chosen = {distinct[i] for i in ranked[:n_cells]}
    return table.take(pa.array([i for i, k in enumerate(keys) if k in chosen]))


SERVE_CHECK_ROWS = 64  # a model: 128 HTTP requests, ~5 s on 2 cores after the app's ~18 s start


def serve_matches_evaluation(cfg: Config, path: str, adapter: str, results: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """Deploy the Serve app with the finetuned adapter and score the fit check's rows through HTTP
    (base and finetuned, each at its fitted temperature): the endpoint must answer the distributions
    the evaluation scored. Returns the largest probability difference and a line for the verdict."""
    from socrates_ray.serve.app import start_serve

    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"adapters": {**cfg.serve.adapters, "finetuned": adapter}})})
    eval_dir = Path(results["report"]).parent
    # the fit check's rows (train split of train.setting), else the first setting's (its eval split)
    sources = [(eval_dir / "fit_check", cfg.train.setting, "train"), *((eval_dir / s, s, "eval") for s in results["settings"])]
    source, setting, split = next(s for s in sources if s[0].is_dir())
    inputs = load_split_rows(cfg.data.prepared, setting, split, None)
    rows, biggest = 0, 0.0
    try:
        url = start_serve(cfg, path)
        for name in ("base", "finetuned"):
            scored = pq.read_table(source / name / "predictions.parquet")
            scored = scored.take(list(range(0, scored.num_rows, -(-scored.num_rows // SERVE_CHECK_ROWS))))  # <= SERVE_CHECK_ROWS
            keys = set(zip(scored["study_id"].to_pylist(), scored["sample_id"].to_pylist()))
            asked = inputs.filter(pa.array([k in keys for k in zip(inputs["study_id"].to_pylist(), inputs["sample_id"].to_pylist())]))
            sim = cfg.simulate.model_copy(update={
                "backend": "http", "endpoint": url, "adapter": None if name == "base" else "finetuned",
                "adapter_path": None if name == "base" else adapter,
                "temperature": results.get("temperature", {}).get(name, cfg.simulate.temperature),
            })
            served = pq.read_table(run_simulation(asked, eval_dir / "serve_check" / name, sim, path,
                                                  cfg.prompt.system_prompt, log=lambda *_: None, token=token))
            want = {(r["study_id"], r["sample_id"]): r["probs"] for r in scored.select(["study_id", "sample_id", "probs"]).to_pylist()}
            for r in served.select(["study_id", "sample_id", "probs"]).to_pylist():
                if r["probs"] is not None:
                    biggest = max(biggest, float(np.abs(np.asarray(r["probs"]) - np.asarray(want[(r["study_id"], r["sample_id"])])).max()))
                    rows += 1
    finally:
        from ray import serve

        serve.shutdown()
    line = (f"Serve app ({url}, adapter 'finetuned') answered {rows:,} requests ({source.name} rows) as the evaluation "
            f"scored them: largest probability difference {biggest:.4f}")
    return {"url": url, "rows": rows, "max_abs_diff": biggest, "line": line}
