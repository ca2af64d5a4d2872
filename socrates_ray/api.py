"""One function per command, from a validated Config: the CLI makes exactly one of these calls per
command, the demo chains them, and a notebook can call them the same way.

    cfg = load_config("configs/demo.yaml", ["run.name=mine"])
    prepare(cfg); outcome = train(cfg); result = evaluate(cfg)     # result: an EvaluationResult
    table = predict(cfg, personas_df, {"cost": "...Only return an integer from 1 to 7, ..."})

Each reads the config only to build the plain values its stage runs on (the builders next to each
stage: prepare_options, plan_run, build_evaluation, build_pass, build_screen_setup, build_app) and
starts or joins Ray where the stage needs it. Nothing here changes the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from socrates_ray.config import Config, ConfigError, dump_config
from socrates_ray.data.ingest import build_ingest_dataset
from socrates_ray.data.ingest_stats import format_ingest, ingest_figures
from socrates_ray.data.prepare import prepare_options, run_prepare
from socrates_ray.data.prepared import load_split_rows, split_problem
from socrates_ray.data.synthetic_files import write_synthetic
from socrates_ray.data.tokenize import Encoder
from socrates_ray.eval.calibrate import build_calibration_split, resolve_temperature
from socrates_ray.eval.job import FINETUNED, build_evaluation, evaluation_dir, run_evaluation
from socrates_ray.eval.passes import build_pass
from socrates_ray.eval.results import EvaluationResult, TemperatureFit
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.infer import engine_spec, load_engine
from socrates_ray.infer.adapter_check import adapter_problem, base_vocab
from socrates_ray.infer.precision import resolve_precision
from socrates_ray.infer.table import persona_grid, predict_table
from socrates_ray.locks import folder_lock
from socrates_ray.preflight import check_inputs
from socrates_ray.models import ensure_tiny_model, load_tokenizer, split_corpus, tiny_model_corpus
from socrates_ray.runtime import ensure_ray
from socrates_ray.screen.job import run_screen, screen_adapters
from socrates_ray.screen.results import ScreenResult, TrustResult
from socrates_ray.screen.simulator import build_screen_setup
from socrates_ray.screen.spec import load_experiment
from socrates_ray.screen.trust import run_from_split
from socrates_ray.serve.app import build_app, serve_launch, start_serve
from socrates_ray.train.checkpoint import chosen_adapter
from socrates_ray.train.trainer import TrainingOutcome, check_training_splits, run_folder, run_training

def synth(cfg: Config, out: str | None = None) -> dict[str, Any]:
    """Write the synthetic SocSci210-format dataset of cfg.synth into `out` (default data.raw)."""
    out = out or cfg.data.raw
    s = cfg.synth
    print(f"synth: {s.studies} studies, ~{s.rows:,} rows, seed {s.seed} -> {out}")
    summary = write_synthetic(out, s.studies, s.rows, s.rows_per_shard, s.seed, s.refusal_rate, s.within_subject_share, log=print)
    dump_config(cfg, out)
    print(f"synth: wrote {summary['rows']:,} rows in {summary['shards']} shard(s), {summary['cells']} cells with true distributions ({out}/ground_truth.parquet)")
    return summary


def prepare(cfg: Config) -> dict[str, Any]:
    """Validate, quarantine, split and prompt-build data.raw into data.prepared; the summary."""
    check_inputs("prepare", cfg)
    with folder_lock(cfg.data.prepared, "prepare"):  # a second writer of this folder is refused before Ray starts
        if cfg.data.parallelism != 1:
            ensure_ray(cfg)  # started here, Ray must already have the CPUs later stages reserve
        return run_prepare(prepare_options(cfg))


def model_path(cfg: Config) -> str:
    """The model folder: built offline first when model.source is tiny."""
    if cfg.model.source == "tiny":
        tiny = cfg.model.tiny
        # at its first build, the tokenizer learns the words of the data it will be finetuned on, if prepared already
        path = ensure_tiny_model(cfg.model.path, tiny, cfg.run.seed, corpus=lambda: split_corpus(
            cfg.data.prepared, cfg.train.setting, tiny.tokenizer_corpus_rows, cfg.run.seed))
        print(f"model: tiny Qwen2 + offline BPE tokenizer (trained on {tiny_model_corpus(path)}) at {cfg.model.path}")
        return str(path)
    return cfg.model.path


def ingest(cfg: Config, split: str) -> dict[str, Any]:
    """Tokenize + pack <setting>/<part> of data.prepared with Ray Data; throughput and padding figures."""
    setting, _, part = split.partition("/")
    if (problem := split_problem(cfg.data.prepared, setting, part or "train")) is not None:
        raise ConfigError(f"--split {split}: {problem}")
    split_dir = str(Path(cfg.data.prepared) / split)
    path = model_path(cfg)  # after the split check: a tiny base is built from the prepared split
    pad_id = Encoder(load_tokenizer(path), cfg.prompt.system_prompt).pad_id
    ensure_ray(cfg)
    ing = cfg.ingest
    ds = build_ingest_dataset(split_dir, path, cfg.prompt.system_prompt, ing.max_length, ing.layout, ing.pack_window, ing.tokenize_actors, ing.cpus_per_task)
    stats = ingest_figures(ds, split_dir, ing.num_workers, ing.micro_batch_size, ing.layout, ing.max_length, pad_id, cfg.run_dir)
    print(format_ingest(stats, ing.layout))
    return stats


def train(cfg: Config) -> TrainingOutcome:
    """Finetune with Ray Train + DeepSpeed; re-running the same config resumes the run."""
    check_inputs("train", cfg)
    check_training_splits(cfg)
    with folder_lock(run_folder(cfg), "train"):  # a second writer of this run is refused before Ray starts
        path = model_path(cfg)
        ensure_ray(cfg)
        return run_training(cfg, path)


def finetuned_adapter(cfg: Config) -> str | None:
    """evaluate.adapter_path, else the export of this run's training that train.keep_by chooses."""
    if cfg.evaluate.adapter_path:
        if (problem := adapter_problem(cfg.evaluate.adapter_path, base_vocab(cfg.model.path))) is not None:
            raise ConfigError(f"evaluate.adapter_path: {problem}")
        return cfg.evaluate.adapter_path
    return chosen_adapter(run_folder(cfg), cfg.train.keep_by)


def serve_token(cfg: Config) -> str | None:
    """The Serve app's bearer token for simulate.backend http (serve.auth_token_env or serve.auth_token_file)."""
    if cfg.simulate.backend != "http":
        return None
    from socrates_ray.serve.auth import bearer_token

    return bearer_token(cfg.serve)


def endpoint(cfg: Config) -> str | None:
    """The running Serve app to simulate through (simulate.backend http), else None (local replicas)."""
    return cfg.simulate.endpoint if cfg.simulate.backend == "http" else None


def serve(cfg: Config) -> str:
    """Deploy the Serve app (the base model, serve.adapters and this run's adapter as 'finetuned');
    returns its URL. It keeps serving on the Ray cluster until Serve is shut down."""
    check_inputs("serve", cfg)
    path = model_path(cfg)
    adapter = finetuned_adapter(cfg)
    extra = {FINETUNED: adapter} if adapter and FINETUNED not in cfg.serve.adapters else {}
    ensure_ray(cfg)
    adapters = {**cfg.serve.adapters, **extra}
    print(f"serve: base model {path}; adapters {adapters or '-'}{'; adapters_dir ' + cfg.serve.adapters_dir if cfg.serve.adapters_dir else ''}")
    url = start_serve(build_app(cfg, path, extra), serve_launch(cfg))
    print(f"serve: listening on {url} (POST /v1/predict, POST /v1/chat/completions, GET /v1/models, GET /healthz); Ctrl-C stops")
    return url


def simulate(cfg: Config, setting: str, out: str | None = None) -> tuple[Path, float, TemperatureFit | None]:
    """Predict a setting's eval rows into <out>/predictions.parquet (resumable); the file, the
    exact-mode temperature used and its fit (simulate.temperature=auto)."""
    check_inputs("simulate", cfg, setting)
    path = model_path(cfg)
    ensure_ray(cfg)
    rows = load_split_rows(cfg.data.prepared, setting, "eval", cfg.simulate.max_per_cell, cfg.run.seed)
    folder = Path(out) if out else cfg.run_dir / "simulate" / setting
    placeholder = 1.0 if cfg.simulate.temperature == "auto" else None
    p = build_pass(cfg.simulate, path, cfg.prompt.system_prompt, engine_spec(cfg.model), adapter_path=cfg.simulate.adapter_path,
                   adapter_name=cfg.simulate.adapter, temperature=placeholder, endpoint=endpoint(cfg), token=serve_token(cfg))
    temperature, fit = resolve_temperature(cfg.simulate.temperature, p, build_calibration_split(cfg), folder.parent / "calibration")
    return run_simulation(rows, folder, p.at_temperature(temperature)), temperature, fit


def evaluate(cfg: Config) -> EvaluationResult:
    """Base vs finetuned (and the regression anchor) on every evaluate.settings; metrics.json, report.md, plots."""
    check_inputs("evaluate", cfg)
    path = model_path(cfg)
    adapter = finetuned_adapter(cfg)
    if adapter is None:
        print("evaluate: no finetuned adapter (evaluate.adapter_path unset, no checkpoint export in the run); base model only")
    ensure_ray(cfg)
    return run_evaluation(build_evaluation(cfg, path, adapter, endpoint(cfg), serve_token(cfg)))


def screen(cfg: Config, experiment_path: str) -> ScreenResult:
    """Screen the planned experiment in `experiment_path`: predicted effects, intervals, power per model."""
    check_inputs("screen", cfg, experiment=experiment_path)
    experiment = load_experiment(experiment_path)
    finetuned = finetuned_adapter(cfg) if FINETUNED in experiment.models else None
    adapters = screen_adapters(experiment, finetuned, str(cfg.run_dir))
    path = model_path(cfg)
    ensure_ray(cfg)
    return run_screen(build_screen_setup(cfg, path, adapters, endpoint(cfg), serve_token(cfg)), experiment)


def screen_trust(cfg: Config, setting: str) -> TrustResult:
    """Replay a prepared split's held-out studies as screenings: agreement with the humans, fitted model error."""
    check_inputs("screen", cfg, setting)
    adapters: dict[str, str | None] = {"base": None}
    if (adapter := finetuned_adapter(cfg)) is not None:
        adapters[FINETUNED] = adapter
    path = model_path(cfg)
    ensure_ray(cfg)
    return run_from_split(build_screen_setup(cfg, path, adapters, endpoint(cfg), serve_token(cfg)), setting)


def model_temperature(cfg: Config, path: str, adapter_path: str | None, name: str) -> float:
    """simulate.temperature when it is a number; for auto, the temperature evaluate fitted for this model
    (its calibration.json), else one fitted now on the validation split and recorded there."""
    if cfg.simulate.temperature != "auto":
        return float(cfg.simulate.temperature)
    folder = evaluation_dir(cfg) / "calibration" / name
    if (record := folder / "calibration.json").is_file() and (t := json.loads(record.read_text()).get("temperature")) is not None:
        print(f"model: temperature {t:.2f} for {name}, as fitted on the validation split ({record})")
        return float(t)
    ensure_ray(cfg)
    p = build_pass(cfg.simulate, path, cfg.prompt.system_prompt, engine_spec(cfg.model), adapter_path=adapter_path,
                   adapter_name=None if adapter_path is None else name, temperature=1.0, mode="exact")
    return resolve_temperature("auto", p, build_calibration_split(cfg), folder)[0]


def local_engine(cfg: Config, path: str, adapters: Mapping[str, str]) -> Any:
    """An inference engine in this process (model.engine; on GPU where simulate.gpus_per_replica > 0)
    with `adapters` (name -> folder) loaded."""
    on_gpu = cfg.simulate.gpus_per_replica > 0
    engine = load_engine(engine_spec(cfg.model), path, cfg.prompt.system_prompt, device="cuda" if on_gpu else "cpu",
                         precision=resolve_precision(cfg.simulate.precision, on_gpu))
    for name, folder in adapters.items():
        engine.load_adapter(name, folder)
    return engine


def predict(cfg: Config, personas: pd.DataFrame, stimuli: Sequence[str] | Mapping[str, str] | None = None,
            adapter: str | None = FINETUNED, temperature: float | None = None) -> pd.DataFrame:
    """Answer distributions for personas x stimuli, in this process (a notebook's quick question; use
    simulate for whole splits). `personas`: one column per demographic field (age, party_id, ...), or a
    table that already has a `stimulus` column when `stimuli` is None. `adapter`: "finetuned" (this run's
    adapter, as evaluate picks it), None (the base model) or an adapter folder. `temperature`: default
    simulate.temperature, or for auto the one fitted on the validation split. Returns the table with
    `options`, `probabilities` and `mean` per row."""
    table = personas if stimuli is None else persona_grid(personas, stimuli)
    path = model_path(cfg)
    if adapter == FINETUNED:
        adapter_path = finetuned_adapter(cfg)
        if adapter_path is None:
            raise ConfigError(f"predict(adapter={FINETUNED!r}): run {cfg.run.name!r} has no checkpoint export under "
                              f"{run_folder(cfg)}; train first, pass adapter=<folder>, or adapter=None for the base model")
    elif adapter is not None:
        if (problem := adapter_problem(adapter, base_vocab(path))) is not None:
            raise ConfigError(f"predict(adapter={adapter!r}): {problem}")
        adapter_path = adapter
    else:
        adapter_path = None
    name = "base" if adapter_path is None else FINETUNED
    t = temperature if temperature is not None else model_temperature(cfg, path, adapter_path, name)
    engine = local_engine(cfg, path, {name: adapter_path} if adapter_path is not None else {})
    return predict_table(engine, table, None if adapter_path is None else name, t, cfg.simulate.top_p, cfg.simulate.batch_size)
