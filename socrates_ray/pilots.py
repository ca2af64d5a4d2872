"""`socrates-ray pilot`: a researcher has run a pilot of a new study; how does the model predict the
full study once it has seen those people? (beyond the paper)

- `run_pilot(cfg, data)`: the pilot's answers (SocSci210's raw Parquet schema, one study) are
  validated into a pilot folder (data/pilot.py); the general adapter (this run's, or
  evaluate.adapter_path) is trained further on them in a Ray Train run of its own
  (`train.init_adapter`, `<run.name>-pilot-<name>-<digest>`: re-running resumes or skips it); the result is
  copied into serve.adapters_dir as `<name>`, where a running Serve app finds it by name with no
  restart; both adapters predict every (condition, task) of the pilot's design for the pilot's
  personas; pilot.md / pilot.json / pilot.png report it with the gain the replay measured.
- `replay_pilots(cfg, "unseen_studies")`: the measurement behind that gain. Held-out studies are
  replayed as pilots of pilot.sizes participants (one adapter per study and size) and scored on
  their participants in no pilot (eval/pilot.py), beside the general adapter (k = 0), the uniform
  guess and the regression anchor given the same pilots.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow as pa

from socrates_ray import api
from socrates_ray.config import Config, ConfigError, derive
from socrates_ray.data.prepare import PREPARED_SCHEMA
from socrates_ray.data.pilot import PILOT_SETTING, PilotData, pilot_rows, prepare_pilot_raw, write_pilot_rows
from socrates_ray.data.prepared import load_split_rows, read_split, val_or_train
from socrates_ray.eval.job import FINETUNED
from socrates_ray.eval.passes import build_pass
from socrates_ray.eval.pilot import (
    GENERAL, ReplayPlan, choose_pilots, design_table, expected_gain, pilot_cells, pilot_rows_of, replay_table, score_replay,
    write_pilot_report,
)
from socrates_ray.eval.results import PilotPoint, PilotReplay, PilotResult
from socrates_ray.infer import engine_spec
from socrates_ray.infer.table import persona_grid, predict_table
from socrates_ray.models import folder_digest
from socrates_ray.preflight import check_inputs
from socrates_ray.runtime import ensure_ray
from socrates_ray.serve.replica import ADAPTER_NAME
from socrates_ray.train.checkpoint import chosen_adapter
from socrates_ray.train.trainer import run_folder

STUDIES = "unseen_studies"
RUN_MARKER = "pilot_run.txt"  # in a served pilot adapter: the training run that made it


def pilot_dir(cfg: Config) -> Path:
    return Path(cfg.pilot.output_dir) if cfg.pilot.output_dir else cfg.run_dir / "pilot"


def adapters_folder(cfg: Config) -> Path:
    """Where pilot adapters are served from: serve.adapters_dir, else <pilot dir>/adapters."""
    return Path(cfg.serve.adapters_dir) if cfg.serve.adapters_dir else pilot_dir(cfg) / "adapters"


def general_adapter(cfg: Config) -> str:
    adapter = api.finetuned_adapter(cfg)
    if adapter is None:
        raise ConfigError(f"pilot: a pilot continues the general adapter, and run {cfg.run.name!r} has none (no checkpoint "
                          f"export under {run_folder(cfg)}, evaluate.adapter_path unset): train first, or set "
                          "evaluate.adapter_path=<adapter folder>")
    return adapter


def pilot_micro_batch(rows: int, largest: int) -> int:
    """The largest micro batch (from half of `largest` to `largest`) whose full batches cover a
    worker's `rows` within 2% of the best any of them covers: an epoch drops what fills no batch,
    and 30 rows at 8 drop 6 a pass, at 6 none."""
    if rows <= largest:
        return max(rows, 1)
    candidates = range(max(1, -(-largest // 2)), largest + 1)
    best = max((rows // m) * m for m in candidates)
    return max(m for m in candidates if (rows // m) * m >= 0.98 * best)


def train_pilot(cfg: Config, pilot: PilotData, run_name: str, general: str) -> str:
    """Train the general adapter further on one pilot folder (its own run); the exported adapter."""
    p = cfg.pilot
    micro = pilot_micro_batch(pilot.rows // p.num_workers, cfg.ingest.micro_batch_size)
    once = 10 ** 9  # eval loss and checkpoint once, at the end: a pilot run is a few dozen steps
    run = derive(cfg, [
        f"data.prepared={pilot.prepared}", f"data.settings=[{PILOT_SETTING}]", f"train.setting={PILOT_SETTING}",
        f"run.name={run_name}", f"train.init_adapter={general}", f"train.epochs={p.epochs}", "train.max_steps=null",
        f"train.lr={p.lr or cfg.train.lr}", f"ingest.num_workers={p.num_workers}", f"ingest.micro_batch_size={micro}",
        f"train.eval_every={once}", f"train.checkpoint_every={once}", "train.keep_checkpoints=1", "train.keep_by=latest",
        "evaluate.adapter_path=null",
    ])
    api.train(run)
    adapter = chosen_adapter(run_folder(run), "latest")
    if adapter is None:
        raise ConfigError(f"pilot: run {run_name} left no adapter export under {run_folder(run)}; see its progress.log")
    return adapter


def _check_name(name: str) -> None:
    if not ADAPTER_NAME.match(name) or ".." in name:
        raise ConfigError(f"--name {name!r}: expected letters, digits, '.', '_' or '-' (the name requests use as `model`)")


def _check_target(target: Path, run_name: str) -> None:
    """A name another pilot run published is refused (before training): a running app may hold that
    adapter cached under the name, and would go on answering with it."""
    marker = target / RUN_MARKER
    if target.exists() and not (marker.is_file() and marker.read_text().strip() == run_name):
        owner = marker.read_text().strip() if marker.is_file() else "not a pilot"
        raise ConfigError(f"pilot: {target} exists (made by {owner}); choose another --name (a running Serve app may have "
                          "the old adapter cached under this one) or remove the folder")


def _publish(adapter: str, target: Path, run_name: str) -> None:
    """Copy the adapter to `target` whole: a replica never sees half a folder."""
    _check_target(target, run_name)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(adapter, partial)
    (partial / RUN_MARKER).write_text(run_name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def load_replay(path: Path) -> PilotReplay | None:
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    raw["points"] = [PilotPoint(**p) for p in raw["points"]]
    return PilotReplay(**raw)


def run_pilot(cfg: Config, data: str, name: str | None = None) -> PilotResult:
    """Finetune a per-study adapter on a pilot's answers, serve it by name, report its predictions."""
    check_inputs("pilot", cfg)
    if name is not None:
        _check_name(name)
    general = general_adapter(cfg)
    out = pilot_dir(cfg)
    staging = out / ".incoming"
    pilot = prepare_pilot_raw(data, staging, frozenset(cfg.data.refusal_codes), cfg.data.rows_per_shard)
    name = name or f"pilot-{pilot.study_id}"
    _check_name(name)
    folder = out / name
    shutil.rmtree(folder / "prepared", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    staging.rename(folder / "prepared")
    pilot = dataclasses.replace(pilot, prepared=str(folder / "prepared"))
    print(f"pilot: study {pilot.study_id}: {pilot.participants} participants, {pilot.rows:,} rows in {pilot.cells} cells"
          f"{f', {pilot.quarantined} quarantined' if pilot.quarantined else ''} -> adapter {name!r}")
    path = api.model_path(cfg)
    ensure_ray(cfg)
    run_name = f"{cfg.run.name}-pilot-{name}-{folder_digest(general, Path(pilot.prepared) / PILOT_SETTING / 'train')}"
    target = adapters_folder(cfg) / name
    _check_target(target, run_name)
    trained = train_pilot(cfg, pilot, run_name, general)
    target.parent.mkdir(parents=True, exist_ok=True)
    _publish(trained, target, run_name)
    t = api.model_temperature(cfg, path, general, FINETUNED)
    rows = pilot_rows(pilot.prepared)
    personas, stimuli = design_table(rows)
    grid = persona_grid(personas, {f"{c}/{k}": s for (c, k), s in stimuli.items()})
    engine = api.local_engine(cfg, path, {GENERAL: general, name: str(target)})
    sim = cfg.simulate
    before = predict_table(engine, grid, GENERAL, t, sim.top_p, sim.batch_size)
    after = predict_table(engine, grid, name, t, sim.top_p, sim.batch_size)
    replay = load_replay(out / "replay" / "replay.json")
    result = PilotResult(name, pilot.study_id, pilot.participants, pilot.rows, pilot.quarantined, str(target), general, t,
                         pilot_cells(rows, before, after), expected_gain(replay, pilot.participants) if replay else None,
                         dict(pilot.reasons or {}))
    result.report = str(write_pilot_report(result, folder))
    print(f"pilot: adapter {name!r} at {target}; a Serve app with serve.adapters_dir={target.parent} answers it by name "
          f"(\"model\": \"{name}\") without a restart")
    print(f"pilot: report {result.report}")
    return result


def replay_pilots(cfg: Config, setting: str = STUDIES) -> PilotReplay:
    """Held-out studies replayed as pilots of pilot.sizes participants, scored on the rest."""
    if setting != STUDIES:
        raise ConfigError(f"pilot --from-split {setting}: a pilot is the first participants of a study the model never saw; "
                          f"replay {STUDIES}")
    check_inputs("pilot", cfg, setting)
    general = general_adapter(cfg)
    p = cfg.pilot
    prepared = cfg.data.prepared
    rows = read_split(prepared, setting, "eval", PREPARED_SCHEMA.names)  # every column: pilots are trained on
    trained_on = set(read_split(prepared, cfg.train.setting, "train", ["study_id"])["study_id"].to_pylist())
    seen = {s for s in set(rows["study_id"].to_pylist()) if s in trained_on}
    if seen:  # the general adapter's training split holds these studies: no pilot of them is new
        rows = rows.filter(pa.array([s not in seen for s in rows["study_id"].to_pylist()]))
    seed = cfg.run.seed if p.seed is None else p.seed
    studies, skipped = choose_pilots(rows, p.sizes, p.min_held_out, p.studies, seed)
    skipped.update({s: f"in train.setting={cfg.train.setting}'s train split: the general adapter saw it" for s in seen})
    if not studies:
        raise ConfigError(f"pilot --from-split {setting}: no held-out study has {max(p.sizes)} + {p.min_held_out} participants "
                          f"(pilot.sizes, pilot.min_held_out); lower them ({len(skipped)} studies skipped)")
    out = pilot_dir(cfg) / "replay"
    path = api.model_path(cfg)
    ensure_ray(cfg)
    print(f"pilot: replaying {len(studies)} held-out studies as pilots of {', '.join(map(str, sorted(p.sizes)))} participants "
          f"({len(studies) * len(p.sizes)} training runs; {len(skipped)} studies skipped, see replay.md)")
    adapters: dict[int, dict[str, str]] = {}
    general_digest = folder_digest(general)  # read once: every run's name carries it
    for study in studies:
        for k in sorted(p.sizes):
            folder = out / study.study_id / f"k{k}"
            pilot = write_pilot_rows(pilot_rows_of(rows, study, k), folder)
            run_name = f"{cfg.run.name}-pilot-{study.study_id}-k{k}-{folder_digest(Path(folder) / PILOT_SETTING / 'train', salt=general_digest)}"
            print(f"pilot: study {study.study_id}, pilot of {k} ({pilot.rows} rows) -> run {run_name}")
            adapters.setdefault(k, {})[study.study_id] = train_pilot(cfg, pilot, run_name, general)
    t = api.model_temperature(cfg, path, general, FINETUNED)
    g = build_pass(cfg.simulate, path, cfg.prompt.system_prompt, engine_spec(cfg.model), adapter_path=general, adapter_name=GENERAL,
                   temperature=t, mode="exact")
    anchor_train = load_split_rows(prepared, cfg.train.setting, "train") if cfg.evaluate.anchor else None
    anchor_val = val_or_train(prepared, cfg.train.setting) if cfg.evaluate.anchor else None
    result = score_replay(ReplayPlan(setting, rows, tuple(studies), skipped, adapters, g, anchor_train, anchor_val, seed, out))
    print("pilot: held-out studies replayed as pilots, scored on the participants in no pilot\n" + replay_table(result))
    print(f"pilot: report {result.report} ({result.seconds:.0f}s scoring)")
    return result

