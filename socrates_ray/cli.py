"""`socrates-ray <command> --config configs/X.yaml key.sub=value ...` (or `python -m socrates_ray
<command> ...`): argv -> config -> one call.

Every command takes the same config file and dotted overrides and makes exactly one call of
socrates_ray.api (the demo: demo.run_demo), in run_command. `socrates-ray <command> --help` lists the
config keys that command reads, with type, choices, default and description, taken from the schema in
config/; `socrates-ray config keys` lists them all and `socrates-ray config show` prints a resolved config.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any

from socrates_ray.config import Config, ConfigError, config_yaml, describe_schema, load_config
from socrates_ray.errors import SocratesError
from socrates_ray.preflight import check_inputs
from socrates_ray.runtime import quiet_libraries


def schema_help(prefixes: tuple[str, ...] = ("",)) -> str:
    """The config keys under any of `prefixes` (all keys for ""), each with its type, default and description."""
    rows = [r for r in describe_schema() if any(r[0] == p or r[0].startswith(p.rstrip(".") + ".") or not p for p in prefixes)]
    width = min(max(len(k) for k, *_ in rows), 36)
    lines = ["config keys this command reads (override any with key.sub=value; `socrates-ray config keys` lists every key):"]
    for key, type_name, default, description in rows:
        lines.append(f"  {key:<{width}}  {type_name} = {default}")
        if description:
            lines.extend(textwrap.wrap(description, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


COMMANDS: dict[str, str] = {
    "demo": "run the whole flow on the embedded default: synthetic data (or data.raw's own dataset), tiny model, 2 CPU workers, Serve",
    "synth": "write a synthetic SocSci210-format dataset with known true distributions",
    "prepare": "validate, quarantine, split and prompt-build raw SocSci210 shards",
    "ingest": "tokenize + pack a prepared split with Ray Data and report throughput and padding",
    "train": "finetune with Ray Train + DeepSpeed (LoRA or full); re-running the same command resumes",
    "serve": "deploy the Ray Serve HTTP app: base model + adapters, batching, OpenAI-compatible chat",
    "simulate": "predict a split's eval rows (exact distributions or sampling) into Parquet; resumable",
    "evaluate": "base vs finetuned on each setting with the paper's metrics; metrics.json, report.md, plots",
    "screen": "screen a planned experiment (--experiment E.yaml): predicted effects, intervals, power; or --from-split",
    "curve": "learning curve: train on growing shares of each study's participants, score all on the same held-out people",
    "pilot": "finetune a new study's adapter on its pilot's answers (--data) and serve it by name; or --from-split unseen_studies: "
             "replay held-out studies as pilots of pilot.sizes participants",
    "build-tiny": "build the offline tiny Qwen2 model and tokenizer into model.path",
    "config": "config show: print the resolved config (file + overrides) as YAML; config keys: every key, documented",
}

# The config keys each command reads, as dotted prefixes: its --help lists these and no others.
_MODEL = ("prompt", "model.source", "model.path", "model.tiny")
_INFERENCE = ("prompt", "model", "simulate", "train.setting", "train.storage_path", "train.keep_by")
COMMAND_KEYS: dict[str, tuple[str, ...]] = {
    "demo": ("",),
    "synth": ("run", "synth", "data.raw"),
    "prepare": ("run", "data"),
    "build-tiny": ("run", "data.prepared", "train.setting", *_MODEL),
    "ingest": ("run", "data.prepared", *_MODEL, "ingest"),
    "train": ("run", "data.prepared", *_MODEL, "ingest", "train"),
    "serve": ("run", "data.prepared", *_INFERENCE, "serve", "evaluate.adapter_path"),
    "simulate": ("run", "data.prepared", *_INFERENCE, "serve.auth_token_env", "serve.auth_token_file"),
    "evaluate": ("run", "data.prepared", *_INFERENCE, "serve.auth_token_env", "serve.auth_token_file", "evaluate"),
    "screen": ("run", "data.prepared", *_INFERENCE, "serve.auth_token_env", "serve.auth_token_file", "evaluate.adapter_path"),
    "curve": ("run", "data", *_INFERENCE, "ingest", "train", "evaluate.anchor", "curve"),
    "pilot": ("run", "data", *_INFERENCE, "ingest", "train", "serve.adapters_dir", "evaluate.adapter_path", "evaluate.anchor", "pilot"),
    "config": ("",),
}


def run_command(name: str, cfg: Config, args: argparse.Namespace) -> Any:
    """The one api call a command makes. Imported here, when a command runs: the stages' libraries
    (Ray, torch, pyarrow, FastAPI) take seconds to import that --help and a config error need not wait for."""
    from socrates_ray import api
    from socrates_ray.demo import run_demo
    from socrates_ray.curves import run_learning_curve
    from socrates_ray.pilots import replay_pilots, run_pilot

    match name:
        case "config":
            print(config_yaml(cfg) if args.action == "show" else schema_help(), end="" if args.action == "show" else "\n")
            return None
        case "demo":
            return run_demo(cfg)
        case "synth":
            return api.synth(cfg, args.out)
        case "prepare":
            return api.prepare(cfg)
        case "build-tiny":
            return api.model_path(cfg)
        case "ingest":
            return api.ingest(cfg, args.split)
        case "train":
            return api.train(cfg)
        case "serve":
            url = api.serve(cfg)
            if not args.no_block:
                serve_until_interrupted()
            return url
        case "simulate":
            return api.simulate(cfg, args.setting, args.out)
        case "evaluate":
            return api.evaluate(cfg)
        case "curve":
            return run_learning_curve(cfg)
        case "pilot":
            if bool(args.data) == bool(args.from_split):
                raise ConfigError("give --data PILOT.parquet (a new study's pilot answers: finetune and serve its adapter) or "
                                  "--from-split unseen_studies (replay held-out studies as pilots), not both or neither")
            return replay_pilots(cfg, args.from_split) if args.from_split else run_pilot(cfg, args.data, args.name)
        case "screen":
            if bool(args.experiment) == bool(args.from_split):
                raise ConfigError("give --experiment E.yaml (screen a planned experiment) or --from-split SETTING (replay a "
                                  "prepared split's held-out studies and fit the model error added to intervals), not both or neither")
            return api.screen_trust(cfg, args.from_split) if args.from_split else api.screen(cfg, args.experiment)
    raise ConfigError(f"unknown command {name!r} (expected one of {', '.join(COMMANDS)})")


def serve_until_interrupted() -> None:
    """Keep the deployed app serving until Ctrl-C, then shut Serve down."""
    import time

    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="socrates-ray",
        description="Finetune LLMs to simulate people in social-science experiments, on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every command takes --config C.yaml and key.sub=value overrides; `socrates-ray <command> --help` lists the "
        "keys it reads, `socrates-ray config keys` every key. Same as `python -m socrates_ray <command> ...`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, epilog=schema_help(COMMAND_KEYS[name]) if name != "config" else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. ingest.max_length=512" if name != "config" else
                       "show (the resolved config as YAML) or keys (every config key), then key.sub=value overrides")
        p.add_argument("--verbose", action="store_true", help="show Ray's INFO logs, access logs and progress bars (run.log_level=info)")
        if name == "synth":
            p.add_argument("--out", default=None, help="output folder (default: data.raw)")
        if name == "serve":
            p.add_argument("--no-block", action="store_true", help="deploy and return (the app keeps running on the cluster)")
        if name == "simulate":
            p.add_argument("--setting", default="unseen_studies", choices=["unseen_studies", "unseen_conditions", "unseen_tasks", "unseen_participants", "all_settings"],
                           help="split setting whose eval rows to simulate")
            p.add_argument("--out", default=None, help="output folder (default: <run>/simulate/<setting>)")
        if name == "screen":
            p.add_argument("--experiment", default=None, help="experiment spec YAML (e.g. configs/experiments/carbon_tax_framing.yaml)")
            p.add_argument("--from-split", default=None, choices=["unseen_studies", "unseen_conditions", "unseen_tasks", "unseen_participants"],
                           help="replay this setting's held-out studies as screenings: agreement with the humans, fitted model error")
        if name == "pilot":
            p.add_argument("--data", default=None, help="the pilot's answers: a Parquet file or folder in SocSci210's raw schema, one study")
            p.add_argument("--name", default=None, help="the adapter's name in the Serve app (default pilot-<study_id>)")
            p.add_argument("--from-split", default=None, choices=["unseen_studies"],
                           help="replay this setting's held-out studies as pilots of pilot.sizes participants, scored on the rest")
        if name == "ingest":
            p.add_argument("--split", default="unseen_studies/train", help="<setting>/<train|eval> under data.prepared")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    # overrides may sit on both sides of --config (`config show --config C a=b`): argparse fills a
    # positional list once, so the words it leaves over are overrides too
    args, extra = parser.parse_known_args(argv)
    if unknown := [w for w in extra if w.startswith("-")]:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides += extra
    if args.command == "config":  # `config show|keys [overrides]`: one positional list (argparse cannot mix two here)
        args.action = args.overrides.pop(0) if args.overrides else None
        if args.action not in ("show", "keys"):
            parser.error(f"config: expected `config show` or `config keys`, got {args.action!r}")
    try:
        cfg = load_config(args.config, args.overrides + (["run.log_level=info"] if args.verbose else []))
        check_inputs(args.command, cfg, getattr(args, "setting", None) or getattr(args, "from_split", None), getattr(args, "experiment", None))
        quiet_libraries(cfg.run)
        run_command(args.command, cfg, args)
    except SocratesError as exc:
        print(f"socrates-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
