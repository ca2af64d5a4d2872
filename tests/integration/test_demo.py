"""`socrates-ray demo`, the README's main command, end to end on a small synthetic dataset: evaluated
in-process, then checked through the Serve app's HTTP endpoint."""

import json

import pytest

from socrates_ray.cli import main

pytestmark = pytest.mark.ray


def test_demo_runs_the_whole_flow_and_serves_what_it_evaluated(ray_local, tmp_path, tiny_model, tiny_shape, capsys):
    overrides = [
        f"run.output_dir={tmp_path}",
        f"train.storage_path={tmp_path}",
        f"data.raw={tmp_path}/synth",
        f"data.prepared={tmp_path}/prepared",
        "synth.rows=1500",
        "synth.studies=8",
        "synth.rows_per_shard=600",
        f"model.path={tiny_model}",
        *tiny_shape,
        "ingest.max_length=1024",
        "train.max_steps=6",
        "train.eval_every=3",
        "train.eval_batches=2",
        "train.checkpoint_every=3",
        "serve.port=8124",
        "simulate.max_per_cell=6",
    ]
    assert main(["demo", "--config", "configs/demo.yaml", *overrides]) == 0
    out = capsys.readouterr().out
    assert "rows in" in out and "tokens/s" in out and "| unseen_studies |" in out and "demo: unseen_conditions: finetuned" in out
    # demo.yaml materializes the tokenized splits: one tokenizing pass feeds the count and both epochs
    assert "train: tokenized the train and val splits once" in out
    run = tmp_path / "demo"
    assert (run / "config.yaml").is_file()
    stats = json.loads((run / "ingest_stats.json").read_text())
    assert stats["tokens"] > 0 and len(set(stats["steps_per_worker"])) == 1
    summary = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    assert summary["rows_in"] == summary["rows_kept"] + summary["rows_quarantined"]
    assert len(list((tmp_path / "synth" / "data").glob("*.parquet"))) >= 3
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert (run / "checkpoint_000006" / "export" / "adapter_model.safetensors").is_file()
    # served, simulated over HTTP, evaluated: predictions, metrics, report and plots on disk
    eval_dir = run / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    for setting in ("unseen_studies", "unseen_conditions"):
        models = metrics["settings"][setting]["models"]
        assert set(models) == {"base", "finetuned", "anchor"} and models["finetuned"]["mode"] == "exact"
        assert models["anchor"]["cells"] == models["finetuned"]["cells"] and models["anchor"]["wasserstein"] is not None
        assert models["finetuned"]["cell_spread"]["human"] > 0
        assert models["finetuned"]["cells"] > 0 and 0 <= models["finetuned"]["wasserstein"] <= 1
        assert metrics["settings"][setting]["baselines"]["true_floor"]["wasserstein"] is not None
        # individual accuracy on the paper's scale: every model and uniform in [0, 1] at max_per_cell 6
        assert all(0 <= models[n]["accuracy"] <= 1 for n in models)
        assert 0.3 < metrics["settings"][setting]["baselines"]["uniform"]["accuracy"] < 0.8
        # parity measured on whole cells, for every model, where the quick evaluation's 6 a cell cannot
        parity = metrics["settings"][setting]["parity"]
        assert set(parity["errors"]) == {"base", "finetuned", "anchor"} and parity["rows"] > 6 * parity["cells"]
        assert any(f["cells"] > 0 for f in parity["fields"].values()) and all(v is not None for v in parity["errors"].values())
        # synthetic data: distance to the scored participants' own true distributions, and persona reading
        for name in ("finetuned", "anchor"):
            truth = models[name]["vs_truth"]
            assert truth["reference"] == "scored participants" and -1 <= truth["persona"]["within_cell_corr"] <= 1
        import pyarrow.parquet as pq

        table = pq.read_table(eval_dir / setting / "finetuned" / "predictions.parquet")
        for column in ("study_id", "sample_id", "condition_num", "task_num", "participant", "response", "prediction", "options", "probs"):
            assert column in table.column_names
        assert (eval_dir / f"{setting}_studies.png").stat().st_size > 1000
    assert "![per study]" in (eval_dir / "report.md").read_text()
    # simulate.temperature=auto (demo.yaml): one temperature per model, fitted on the validation split
    # (scored like the rest), used for that model's test predictions
    assert summary["settings"]["all_settings"]["val"]["rows"] > 0
    for name in ("base", "finetuned"):
        fit = json.loads((eval_dir / "calibration" / name / "calibration.json").read_text())
        assert fit["split"] == "all_settings/val" and fit["rows"] > 0 and fit["nll"] <= fit["nll_at_1"]
        assert metrics["temperature"][name] == pytest.approx(fit["temperature"])
        used = json.loads((eval_dir / "unseen_studies" / name / "simulate_params.json").read_text())
        assert used["temperature"] == pytest.approx(fit["temperature"])
    assert "Exact-mode temperature: base T=" in (eval_dir / "report.md").read_text()
    assert "exact-mode temperature base" in out
    # the anchor and the fit check are in every report; training progress reaches the terminal from progress.log
    assert metrics["anchor"]["trained_on"] == "all_settings/train"
    fit = metrics["fit_check"]
    assert fit["split"] == "all_settings/train" and fit["cells"] > 0 and fit["models"]["finetuned"]["wasserstein"] is not None
    # the fit check scores whole training cells (up to evaluate.fit_check_per_cell), not simulate.max_per_cell
    assert fit["rows"] > 6 * fit["cells"] and fit["models"]["finetuned"]["vs_truth"]  # simulate.max_per_cell=6 would cap it there
    assert "Fit check on" in out and "Fit check on" in (eval_dir / "report.md").read_text()
    assert "persona reading" in out and "persona reading" in (eval_dir / "report.md").read_text()
    assert "Demographic parity on" in (eval_dir / "report.md").read_text() and "subgroup gap error on the" in out
    assert "nan" not in (eval_dir / "report.md").read_text()
    assert "[socrates_ray] step 6/6" in out
    # evaluated in-process (the batch path), then the Serve app answered the same rows over HTTP with
    # the same distributions (base and the 'finetuned' adapter, each at its fitted temperature)
    assert json.loads((eval_dir / "unseen_studies" / "finetuned" / "simulate_params.json").read_text())["adapter_path"]
    check = json.loads((run / "demo_summary.json").read_text())["serve_check"]
    assert check["rows"] > 0 and check["max_abs_diff"] < 0.02
    assert (eval_dir / "serve_check" / "finetuned" / "predictions.parquet").is_file()
    assert "Serve app (" in out and "answered" in out
