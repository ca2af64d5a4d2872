"""`socrates-ray <command> --config configs/X.yaml key.sub=value ...`: argv -> config -> one call.

Every command takes the same config file and dotted overrides and makes exactly one call of
socrates_ray.api (the demo: demo.run_demo), in run_command; `--help` lists every config key with its
type, default and description, taken from the schema in config/.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any

from socrates_ray.config import Config, ConfigError, describe_schema, load_config
from socrates_ray.errors import SocratesError
from socrates_ray.runtime import quiet_libraries


def schema_help() -> str:
    rows = describe_schema()
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (override any with key.sub=value; values are parsed as YAML):"]
    for key, type_name, default, description in rows:
        lines.append(f"  {key:<{width}}  {type_name} = {default}")
        if description:
            lines.extend(textwrap.wrap(description, 96, initial_indent=" " * (width + 4), subsequent_indent=" " * (width + 4)))
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
    "build-tiny": "build the offline tiny Qwen2 model and tokenizer into model.path",
}


def run_command(name: str, cfg: Config, args: argparse.Namespace) -> Any:
    """The one api call a command makes. Imported here, when a command runs: the stages' libraries
    (Ray, torch, pyarrow, FastAPI) take seconds to import that --help and a config error need not wait for."""
    from socrates_ray import api
    from socrates_ray.demo import run_demo

    match name:
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
        epilog=schema_help(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary in COMMANDS.items():
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
        run_command(args.command, cfg, args)
    except SocratesError as exc:
        print(f"socrates-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
