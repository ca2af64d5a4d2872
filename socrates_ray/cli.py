"""`socrates-ray <command> --config configs/X.yaml key.sub=value ...`: argv -> config -> command.

Every command takes the same config file and dotted overrides; `--help` lists every config key
with its type, default and description, taken from the schema in config/schema.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from socrates_ray.config import Config, ConfigError, RunSection, describe_schema, dump_config, load_config
from socrates_ray.errors import SocratesError



def schema_help() -> str:
    rows = describe_schema()
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (override any with key.sub=value; values are parsed as YAML):"]
    for key, type_name, default, description in rows:
        lines.append(f"  {key:<{width}}  {type_name} = {default}")
        if description:
            lines.extend(textwrap.wrap(description, 96, initial_indent=" " * (width + 4), subsequent_indent=" " * (width + 4)))
    return "\n".join(lines)


def ensure_ray(cfg: Config) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local instance with enough logical CPUs.

    A local run reserves whole or fractional CPUs for training workers, for the train and eval
    tokenizer pools and for Ray Data's file listing (one whole CPU, not configurable). On a
    2-core laptop that exceeds the cores, and Ray would wait forever for the listing task; the
    local instance therefore gets max(cores, what the run reserves) logical CPUs. The cores are
    shared: the data side mostly idles while the workers compute.
    """
    import math

    import ray

    if ray.is_initialized():
        return
    verbose = cfg.run.verbose
    # Quiet runs keep Ray workers' output out of the terminal (it stays in /tmp/ray/session_latest/logs);
    # training progress reaches the driver through the run folder instead (trainer.follow_progress).
    options = {"log_to_driver": verbose, "logging_config": ray.LoggingConfig(log_level=cfg.run.log_level.upper())}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**options)
    else:
        ing, t = cfg.ingest, cfg.train
        reserved = ing.num_workers * t.cpus_per_worker + 2 * ing.tokenize_actors * ing.cpus_per_task + 2
        # address="local": a new instance even where another local one runs (without it ray.init joins
        # that one and refuses num_cpus: "When connecting to an existing cluster, num_cpus ... must not be provided")
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(reserved)), include_dashboard=False, **options)
    if not verbose:  # on a cluster too: the Parquet reader's planning lines come from this process
        import logging

        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        # Ray Data sets its loggers' levels from its own logging config when first imported
        # ("Starting execution of Dataset ...", "Execution plan ...", "execution finished" per dataset)
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def quiet_libraries(run: RunSection) -> None:
    """Below `info`: no library warnings, progress bars or INFO lines from Ray, DeepSpeed, transformers and
    peft in this process and in the Ray workers it starts (they inherit the environment).
    socrates_ray's own lines are prints and stay."""
    import logging
    import warnings

    if run.verbose:
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    level = getattr(logging, run.log_level.upper())
    for name in ("ray", "ray.data", "ray.train", "ray.serve", "DeepSpeed", "transformers", "peft", "torch"):
        logging.getLogger(name).setLevel(level)
    # DeepSpeed and Serve set their loggers' levels again when imported or started (DeepSpeed's
    # "Setting accelerator to CPU" warning, Serve's "Started Serve" INFO lines); a filter stays.
    for name in ("DeepSpeed", "ray.serve"):
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, AtLeast)]  # one per logger, however many runs
        logger.addFilter(AtLeast(level))


class AtLeast:
    """A logging filter that keeps records at `level` and above, whatever the logger's level is set to later."""

    def __init__(self, level: int) -> None:
        self.level = level

    def filter(self, record: Any) -> bool:
        return record.levelno >= self.level


def cmd_synth(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from socrates_ray.data.synthetic import write_synthetic

    out = args.out or cfg.data.raw
    s = cfg.synth
    print(f"synth: {s.studies} studies, ~{s.rows:,} rows, seed {s.seed} -> {out}")
    summary = write_synthetic(out, s.studies, s.rows, s.rows_per_shard, s.seed, s.refusal_rate, s.within_subject_share, log=print)
    dump_config(cfg, out)
    print(f"synth: wrote {summary['rows']:,} rows in {summary['shards']} shard(s), {summary['cells']} cells with true distributions ({out}/ground_truth.parquet)")
    return summary


def cmd_prepare(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from socrates_ray.data.prepare import run_prepare

    if cfg.data.parallelism != 1:
        ensure_ray(cfg)  # started here, Ray must already have the CPUs later stages reserve

    return run_prepare(cfg)


def model_path(cfg: Config) -> str:
    """The model folder: built offline first when model.source is tiny."""
    if cfg.model.source == "tiny":
        from socrates_ray.models import ensure_tiny_model, split_corpus, tiny_model_corpus

        tiny = cfg.model.tiny
        # at its first build, the tokenizer learns the words of the data it will be finetuned on, if prepared already
        path = ensure_tiny_model(cfg.model.path, tiny, cfg.run.seed, corpus=lambda: split_corpus(
            cfg.data.prepared, cfg.train.setting, tiny.tokenizer_corpus_rows, cfg.run.seed))
        print(f"model: tiny Qwen2 + offline BPE tokenizer (trained on {tiny_model_corpus(path)}) at {cfg.model.path}")
        return str(path)
    return cfg.model.path


def cmd_build_tiny(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    path = model_path(cfg)
    return {"model": path}


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from socrates_ray.data.ingest import build_ingest_dataset, format_ingest, ingest_figures, load_tokenizer
    from socrates_ray.data.prepare import split_problem
    from socrates_ray.data.tokenize import Encoder

    split_dir = str(Path(cfg.data.prepared) / args.split)
    setting, _, part = args.split.partition("/")
    if (problem := split_problem(cfg.data.prepared, setting, part or "train")) is not None:
        raise ConfigError(f"--split {args.split}: {problem}")
    path = model_path(cfg)  # after the split check: a tiny base is built from the prepared split
    pad_id = Encoder(load_tokenizer(path), cfg.prompt.system_prompt).pad_id
    ensure_ray(cfg)
    ing = cfg.ingest
    ds = build_ingest_dataset(split_dir, path, cfg.prompt.system_prompt, ing.max_length, ing.layout, ing.pack_window, ing.tokenize_actors, ing.cpus_per_task)
    stats = ingest_figures(ds, split_dir, ing.num_workers, ing.micro_batch_size, ing.layout, ing.max_length, pad_id, cfg.run_dir)
    print(format_ingest(stats, ing.layout))
    return stats


def cmd_train(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from socrates_ray.data.prepare import split_problem
    from socrates_ray.train.trainer import run_folder, run_training, training_eval_part

    path = model_path(cfg)
    for part in ("train", training_eval_part(cfg)):
        if (problem := split_problem(cfg.data.prepared, cfg.train.setting, part)) is not None:
            raise ConfigError(f"train.setting={cfg.train.setting}: {problem}")
    ensure_ray(cfg)
    import ray.train

    try:
        result = run_training(cfg, path)
    except ray.train.TrainingFailedError as exc:
        first_lines = " ".join(str(exc).split("\n")[:3])
        raise TrainError(
            f"training failed after train.max_failures={cfg.train.max_failures} retries ({first_lines}); "
            f"run the same command again to resume from the latest checkpoint in {run_folder(cfg)}"
        ) from None
    return {"checkpoint": result.checkpoint, "run_dir": str(result.run_dir)}


class TrainError(SocratesError, RuntimeError):
    """A run that failed for good (its retries spent)."""


def resolve_adapter_path(cfg: Config) -> str | None:
    """evaluate.adapter_path, else the export of this run's training that train.keep_by chooses."""
    from socrates_ray.eval.job import chosen_adapter
    from socrates_ray.train.trainer import run_folder

    if cfg.evaluate.adapter_path:
        if not (Path(cfg.evaluate.adapter_path) / "adapter_config.json").is_file():
            raise ConfigError(f"evaluate.adapter_path: {cfg.evaluate.adapter_path} has no adapter_config.json (expected a PEFT adapter folder, e.g. <run>/checkpoint_N/export)")
        return cfg.evaluate.adapter_path
    return chosen_adapter(run_folder(cfg), cfg.train.keep_by)


def cmd_serve(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Deploy the Serve app and keep serving until interrupted."""
    from socrates_ray.serve.app import start_serve

    path = model_path(cfg)
    adapter = resolve_adapter_path(cfg)
    if adapter and "finetuned" not in cfg.serve.adapters:
        cfg.serve.adapters = {**cfg.serve.adapters, "finetuned": adapter}
    ensure_ray(cfg)
    print(f"serve: base model {path}; adapters {cfg.serve.adapters or '-'}{'; adapters_dir ' + cfg.serve.adapters_dir if cfg.serve.adapters_dir else ''}")
    url = start_serve(cfg, path, blocking=False)
    print(f"serve: listening on {url} (POST /v1/predict, POST /v1/chat/completions, GET /v1/models, GET /healthz); Ctrl-C stops")
    if args.no_block:
        return {"url": url}
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return {"url": url}


def cmd_simulate(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from socrates_ray.eval.calibrate import resolve_temperature
    from socrates_ray.eval.simulate import load_eval_rows, run_simulation
    from socrates_ray.score import Engine

    path = model_path(cfg)
    ensure_ray(cfg)
    rows = load_eval_rows(cfg.data.prepared, args.setting, cfg.simulate.max_per_cell, cfg.run.seed)
    out = Path(args.out) if args.out else cfg.run_dir / "simulate" / args.setting
    temperature, fit = resolve_temperature(cfg, cfg.simulate, path, out.parent / "calibration", token=_token(cfg))
    sim = cfg.simulate.model_copy(update={"temperature": temperature})
    target = run_simulation(rows, out, sim, path, cfg.prompt.system_prompt, token=_token(cfg), engine=Engine.of(cfg.model))
    return {"predictions": str(target), "temperature": temperature, "calibration": fit}


def _token(cfg: Config) -> str | None:
    return os.environ.get(cfg.serve.auth_token_env) if cfg.serve.auth_token_env else None


def cmd_evaluate(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    from socrates_ray.eval.job import run_evaluation

    path = model_path(cfg)
    adapter = resolve_adapter_path(cfg)
    if adapter is None:
        print("evaluate: no finetuned adapter (evaluate.adapter_path unset, no checkpoint export in the run); base model only")
    ensure_ray(cfg)
    endpoint = cfg.simulate.endpoint if cfg.simulate.backend == "http" else None
    return run_evaluation(cfg, path, adapter, endpoint=endpoint, token=_token(cfg))


def cmd_screen(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Screen a planned experiment (--experiment), or measure how far screenings can be trusted on a
    prepared split's held-out studies (--from-split)."""
    from socrates_ray.screen.spec import ExperimentError, load_experiment

    if bool(args.experiment) == bool(args.from_split):
        raise ExperimentError("give --experiment E.yaml (screen a planned experiment) or --from-split SETTING "
                              "(replay a prepared split's held-out studies and fit the model error added to intervals), not both or neither")
    endpoint = cfg.simulate.endpoint if cfg.simulate.backend == "http" else None
    if args.from_split:
        from socrates_ray.screen.trust import run_from_split

        adapters = {"base": None}
        if (adapter := resolve_adapter_path(cfg)) is not None:
            adapters["finetuned"] = adapter
        path = model_path(cfg)
        ensure_ray(cfg)
        return run_from_split(cfg, args.from_split, path, adapters, endpoint=endpoint, token=_token(cfg))
    from socrates_ray.screen.job import run_screen, screen_adapters

    experiment = load_experiment(args.experiment)
    finetuned = resolve_adapter_path(cfg) if "finetuned" in experiment.models else None
    adapters = screen_adapters(experiment, finetuned, str(cfg.run_dir))
    path = model_path(cfg)
    ensure_ray(cfg)
    return run_screen(cfg, experiment, path, adapters, endpoint=endpoint, token=_token(cfg))


def synth_unless_given(cfg: Config) -> dict[str, Any]:
    """The demo's data: synthetic, written to data.raw, unless data.raw already holds a dataset synth did
    not write (a URL, or a folder of Parquet files without synth's summary): then the demo runs on it as it is."""
    from socrates_ray.data.synthetic import foreign_parquet

    raw = str(cfg.data.raw)
    given = "://" in raw or foreign_parquet(raw)
    if not given:
        return cmd_synth(cfg, argparse.Namespace(out=raw))
    what = "a URL" if "://" in raw else f"{len(given)} Parquet file(s) synth did not write"
    print(f"demo: data.raw={raw} holds {what}: the demo runs on that dataset as it is (no synthetic data; no "
          "true-distribution floor unless it has a ground_truth.parquet)")
    return {"skipped": "data.raw holds a dataset synth did not write", "raw": raw}


def cmd_demo(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """synth (or data.raw's own dataset) -> prepare -> finetune (its tokenizing pass reports the ingest figures)
    -> evaluate base and finetuned (batch simulation) -> Serve, checked to answer what the evaluation scored."""
    import time

    from socrates_ray.eval.job import run_evaluation, serve_matches_evaluation
    from socrates_ray.eval.report import persona_corr

    started = time.time()
    out = cfg.run_dir
    print(f"demo: run folder {out}")
    ensure_ray(cfg)
    synth = synth_unless_given(cfg)
    prepared = cmd_prepare(cfg, args)
    # ingest.materialize: training's one tokenizing pass reports the ingest figures (no pass of its own)
    ingest = None if cfg.ingest.materialize else cmd_ingest(cfg, argparse.Namespace(split=f"{cfg.train.setting}/train"))
    trained = cmd_train(cfg, args)
    ingest = ingest or json.loads((Path(trained["run_dir"]) / "ingest_stats.json").read_text())
    path = model_path(cfg)
    adapter = resolve_adapter_path(cfg)
    # The batch path (a pool of model replicas, kept for every pass): 2-3x the rows/s of one HTTP request a row
    # on 2 cores, and how whole studies are simulated at scale. Serve is checked against it below.
    results = run_evaluation(cfg, path, adapter)
    serve_check = serve_matches_evaluation(cfg, path, adapter, results, token=_token(cfg))
    verdicts = []
    for setting, r in results["settings"].items():
        w = {k: v["wasserstein"] for k, v in r["models"].items()}
        uniform = r["baselines"]["uniform"]["wasserstein"]
        gap = r["comparison"]["finetuned"]["gap_closed (W_uniform - W) / (W_uniform - W_floor)"]
        anchor = f" vs anchor {w['anchor']:.4f}" if "anchor" in w else ""
        truth = {k: m["vs_truth"]["removed"] for k, m in r["models"].items() if "vs_truth" in m}
        to_truth = (f"; against the true distributions it removes {truth['finetuned']:.0%} of uniform's distance"
                    + (f" (anchor {truth['anchor']:.0%})" if "anchor" in truth else "")) if "finetuned" in truth else ""
        persona = {k: persona_corr(m) for k, m in r["models"].items()}
        if persona.get("finetuned") is not None:
            to_truth += f"; persona reading {persona['finetuned']:+.2f}" + (
                f" (anchor {persona['anchor']:+.2f})" if persona.get("anchor") is not None else "")
        floor = ""
        if r["comparison"].get("floor_used_for_gap") == "floor":  # no true distributions: the resampling floor
            n = r["baselines"]["floor"].get("answers_per_cell")
            floor = f" (resampling floor, median {n} answers a cell{'; past it: see the note above' if gap is not None and gap > 1 else ''})"
        verdicts.append(
            f"{setting}: finetuned {w['finetuned']:.4f} vs base {w['base']:.4f} vs uniform {uniform:.4f}{anchor}; "
            f"finetuned closes {gap:.0%} of the uniform-to-floor gap{floor}{to_truth}"
        )
    verdicts.append(serve_check["line"])
    result = {"synth": synth, "prepare": prepared, "ingest": ingest, "train": trained, "evaluate": results,
              "serve_check": serve_check, "seconds": round(time.time() - started, 1)}
    (out / "demo_summary.json").write_text(json.dumps(result, indent=1, default=str))
    temps = results.get("temperature", {})
    if cfg.simulate.mode == "exact" and temps:
        how = "fitted on the validation split" if cfg.simulate.temperature == "auto" else "from simulate.temperature"
        verdicts.append("exact-mode temperature " + ", ".join(f"{k} {v:.2f}" for k, v in temps.items()) + f" ({how})")
    from socrates_ray.eval.report import fit_check_line

    if line := fit_check_line(results):
        verdicts.append(line)
    print("demo: " + "\ndemo: ".join(verdicts))
    print(f"demo: done in {time.time() - started:,.0f}s; report {results['report']}; training run {trained['run_dir']}")
    return result


COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], Any], str]] = {
    "demo": (cmd_demo, "run the whole flow on the embedded default: synthetic data (or data.raw's own dataset), tiny model, 2 CPU workers, Serve"),
    "synth": (cmd_synth, "write a synthetic SocSci210-format dataset with known true distributions"),
    "prepare": (cmd_prepare, "validate, quarantine, split and prompt-build raw SocSci210 shards"),
    "ingest": (cmd_ingest, "tokenize + pack a prepared split with Ray Data and report throughput and padding"),
    "train": (cmd_train, "finetune with Ray Train + DeepSpeed (LoRA or full); re-running the same command resumes"),
    "serve": (cmd_serve, "deploy the Ray Serve HTTP app: base model + adapters, batching, OpenAI-compatible chat"),
    "simulate": (cmd_simulate, "predict a split's eval rows (exact distributions or sampling) into Parquet; resumable"),
    "evaluate": (cmd_evaluate, "base vs finetuned on each setting with the paper's metrics; metrics.json, report.md, plots"),
    "screen": (cmd_screen, "screen a planned experiment (--experiment E.yaml): predicted effects, intervals, power; or --from-split"),
    "build-tiny": (cmd_build_tiny, "build the offline tiny Qwen2 model and tokenizer into model.path"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="socrates-ray",
        description="Finetune LLMs to simulate people in social-science experiments, on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=schema_help(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, epilog=schema_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. ingest.max_length=512")
        p.add_argument("--verbose", action="store_true", help="show Ray's INFO logs, access logs and progress bars (run.log_level=info)")
        if name == "synth":
            p.add_argument("--out", default=None, help="output folder (default: data.raw)")
        if name == "serve":
            p.add_argument("--no-block", action="store_true", help="deploy and return (the app keeps running on the cluster)")
        if name == "simulate":
            p.add_argument("--setting", default="unseen_studies", help="split setting whose eval rows to simulate")
            p.add_argument("--out", default=None, help="output folder (default: <run>/simulate/<setting>)")
        if name == "screen":
            p.add_argument("--experiment", default=None, help="experiment spec YAML (e.g. configs/experiments/carbon_tax_framing.yaml)")
            p.add_argument("--from-split", default=None, choices=["unseen_studies", "unseen_conditions", "unseen_tasks"],
                           help="replay this setting's held-out studies as screenings: agreement with the humans, fitted model error")
        if name == "ingest":
            p.add_argument("--split", default="unseen_studies/train", help="<setting>/<train|eval> under data.prepared")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides + (["run.log_level=info"] if args.verbose else []))
        quiet_libraries(cfg.run)
        COMMANDS[args.command][0](cfg, args)
    except SocratesError as exc:
        print(f"socrates-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
