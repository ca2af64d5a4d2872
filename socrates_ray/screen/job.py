"""`socrates-ray screen`: simulate a planned experiment with each model and analyse it.

    spec -> personas (design.py) -> rows -> the simulate stage (local replicas or the Serve app;
    resumable parts under <run>/screen/<name>/simulate/<model>/) -> effects, intervals, power
    (analysis.py) -> screen.json, report.md, plots (report.py)

Each model's exact-mode temperature is fitted on the validation split as evaluate fits it, and each
model's error (added to every interval) is the one `screen --from-split` fitted on held-out human
studies (screen_calibration.json in the run folder; trust.py), 0 until one was fitted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import Config
from socrates_ray.eval.calibrate import resolve_temperature
from socrates_ray.eval.job import model_simulate_section
from socrates_ray.eval.simulate import ReplicaPool, run_simulation
from socrates_ray.score import Engine
from socrates_ray.screen.analysis import Arm, contrast_effect, n_needed, power_at, summarize_arm, verdict
from socrates_ray.screen.design import build_rows, draw_personas, personas_needed
from socrates_ray.screen.spec import Experiment, ExperimentError

CALIBRATION_FILE = "screen_calibration.json"


class Simulator:
    """Predictions of several models (base = adapter None) on any rows, through one replica pool
    or the Serve app; each model's temperature fitted once, on the validation split."""

    def __init__(self, cfg: Config, model_path: str, adapters: dict[str, str | None], calibration_dir: Path,
                 log: Callable[[str], None], endpoint: str | None, token: str | None, pool: ReplicaPool | None) -> None:
        self.cfg, self.model_path, self.adapters = cfg, model_path, adapters
        self.calibration_dir, self.log, self.endpoint, self.token, self.pool = calibration_dir, log, endpoint, token, pool
        self.temperatures: dict[str, float] = {}

    def _section(self, name: str, temperature: Any) -> Any:
        path = self.adapters[name]
        # exact distributions whatever simulate.mode says: effects, intervals and power are computed from them
        exact = self.cfg.simulate.model_copy(update={"mode": "exact"})
        return model_simulate_section(exact, None if path is None else name, path, self.endpoint, temperature)

    def temperature(self, name: str) -> float:
        if name not in self.temperatures:
            self.temperatures[name], _ = resolve_temperature(
                self.cfg, self._section(name, self.cfg.simulate.temperature), self.model_path, self.calibration_dir / name,
                self.log, self.token, pool=self.pool)
        return self.temperatures[name]

    def predict(self, name: str, rows: pa.Table, folder: Path) -> pa.Table:
        sim = self._section(name, self.temperature(name))
        return pq.read_table(run_simulation(rows, folder, sim, self.model_path, self.cfg.prompt.system_prompt, self.log,
                                            self.token, pool=self.pool))


@contextmanager
def simulator(cfg: Config, model_path: str, adapters: dict[str, str | None], calibration_dir: Path,
              log: Callable[[str], None] = print, endpoint: str | None = None, token: str | None = None) -> Iterator[Simulator]:
    """A Simulator over one local replica pool holding every adapter (or over the Serve app at endpoint)."""
    if endpoint:
        yield Simulator(cfg, model_path, adapters, calibration_dir, log, endpoint, token, None)
        return
    loaded = {name: path for name, path in adapters.items() if path is not None}
    with ReplicaPool(cfg.simulate, model_path, cfg.prompt.system_prompt, loaded, Engine.of(cfg.model)) as pool:
        yield Simulator(cfg, model_path, adapters, calibration_dir, log, None, token, pool)


def arms_of(table: pa.Table) -> dict[tuple[int, int], tuple[Arm, list[dict[str, Any]]]]:
    """(arm index, outcome index) -> (its participants' distributions, their demographics), ordered by
    participant (so a within-subject design's arms line up person by person)."""
    cols = {c: table[c].to_pylist() for c in ("condition_num", "task_num", "participant", "options", "probs", "demographic")}
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(cols["condition_num"], cols["task_num"])):
        if cols["probs"][i] is not None:
            groups.setdefault(key, []).append(i)
    found = {}
    for key, rows in groups.items():
        rows.sort(key=lambda i: cols["participant"][i])
        found[key] = (Arm.of(cols["options"][rows[0]], [cols["probs"][i] for i in rows]), [cols["demographic"][i] for i in rows])
    return found


def analyze(experiment: Experiment, table: pa.Table, model_error: float, seed: int) -> dict[str, Any]:
    """Per outcome: each arm's predicted distribution and mean; each contrast's effect, interval,
    verdict, humans needed and power at the planned n; its subgroup effects."""
    a = experiment.analysis
    rng = np.random.default_rng(seed)
    arm_names = [name for name, _ in experiment.arms()]
    index = {name: i for i, name in enumerate(arm_names)}
    paired = experiment.design == "within"
    planned = a.planned_n or experiment.population.n_per_arm
    groups = arms_of(table)
    outcomes: dict[str, Any] = {}
    for t, outcome in enumerate(experiment.outcomes):
        arms = {name: groups[(index[name], t)] for name in arm_names}
        result: dict[str, Any] = {"arms": {name: summarize_arm(arm) for name, (arm, _) in arms.items()}, "contrasts": []}
        for c in experiment.planned_contrasts():
            (treat, demo_t), (ctrl, demo_c) = arms[c.treatment], arms[c.control]
            effect = contrast_effect(treat, ctrl, paired, a.interval, a.bootstrap, rng, model_error)
            effect |= {"treatment": c.treatment, "control": c.control, "expected": c.expected,
                       "verdict": verdict(effect["interval"], c.expected),
                       "humans_per_arm_needed": n_needed(effect["d"], a.alpha, a.power, paired),
                       "planned_n": planned, "power_at_planned_n": power_at(effect["d"], planned, a.alpha, paired),
                       "subgroups": {}}
            for field in experiment.subgroups:
                levels = sorted({d[field] for d in demo_t + demo_c if d[field] is not None}, key=str)
                per_level = {}
                for level in levels:
                    rows_t = np.array([i for i, d in enumerate(demo_t) if d[field] == level], dtype=int)
                    rows_c = rows_t if paired else np.array([i for i, d in enumerate(demo_c) if d[field] == level], dtype=int)
                    if min(len(rows_t), len(rows_c)) < a.min_subgroup_n:
                        continue
                    sub = contrast_effect(treat.take(rows_t), ctrl.take(rows_c), paired, a.interval, a.bootstrap, rng, model_error)
                    per_level[str(level)] = {k: sub[k] for k in ("difference", "interval", "d", "n_treatment", "n_control")}
                effect["subgroups"][field] = per_level
            result["contrasts"].append(effect)
        outcomes[outcome.name] = result
    return outcomes


def screen_adapters(experiment: Experiment, finetuned: str | None, run_dir: str) -> dict[str, str | None]:
    """Model name -> adapter folder (None = the base model): `finetuned` is the run's chosen export."""
    found: dict[str, str | None] = {}
    for name in experiment.models:
        if name == "base":
            found[name] = None
        elif name == "finetuned":
            if finetuned is None:
                raise ExperimentError(f"models: finetuned, but run {run_dir} has no exported adapter; train first "
                                      "(socrates-ray train or demo), set evaluate.adapter_path, or screen with models: [base]")
            found[name] = finetuned
        else:
            path = experiment.adapters[name]
            if not (Path(path) / "adapter_config.json").is_file():
                raise ExperimentError(f"adapters.{name}: {path} has no adapter_config.json (expected a PEFT adapter folder)")
            found[name] = path
    return found


def load_model_errors(run_dir: Path, adapters: dict[str, str | None], log: Callable[[str], None]) -> dict[str, float]:
    """Each model's fitted error from screen_calibration.json (0 where none was fitted for this very adapter)."""
    path = run_dir / "screen" / CALIBRATION_FILE
    fitted = json.loads(path.read_text()) if path.is_file() else {}
    errors = {}
    for name, adapter in adapters.items():
        record = fitted.get(name)
        if record and record.get("adapter_path") == adapter:
            errors[name] = float(record["model_error"])
        else:
            errors[name] = 0.0
            why = "for this adapter" if record else "yet"
            log(f"screen: no model error fitted for {name} {why} (`socrates-ray screen --from-split <setting>` fits one on held-out "
                "human studies); its intervals count sampling only and trust the model's effects")
    return errors


def rows_fingerprint(rows: pa.Table) -> str:
    """A hash of what the rows ask (ids, prompts, scales): a changed spec changes it."""
    digest = hashlib.sha256()
    for column in ("sample_id", "prompt", "scale_low", "scale_high"):
        digest.update(json.dumps(rows[column].to_pylist()).encode())
    return digest.hexdigest()[:16]


def keep_only_current(folder: Path, fingerprint: str, log: Callable[[str], None]) -> None:
    """Resume the folder's predictions only if they were made for these very rows: after a spec
    edit (other arms, people or questions under the same row ids) the old parts are removed, with
    a log line, instead of being mixed into the new screening."""
    record = folder / "rows_fingerprint.txt"
    if folder.is_dir() and any(folder.glob("part-*.parquet")) and (not record.is_file() or record.read_text() != fingerprint):
        log(f"screen: the spec changed since {folder} was simulated; simulating it again")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(fingerprint)


def run_screen(cfg: Config, experiment: Experiment, model_path: str, adapters: dict[str, str | None],
               log: Callable[[str], None] = print, endpoint: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Simulate `experiment` with each of its models and write screen.json, report.md and the plots."""
    from socrates_ray.screen.report import write_screen_report

    out = cfg.run_dir / "screen" / experiment.name
    out.mkdir(parents=True, exist_ok=True)
    personas = draw_personas(experiment.population, personas_needed(experiment), cfg.data.prepared)
    rows = build_rows(experiment, personas)
    arms = experiment.arms()
    log(f"screen: {experiment.name}: {len(arms)} arms x {len(experiment.outcomes)} outcome(s), {experiment.population.n_per_arm} "
        f"people per arm ({experiment.design}-subject, personas from {experiment.population.source}) = {rows.num_rows:,} rows per model; "
        f"models {', '.join(experiment.models)}")
    a = experiment.analysis
    errors = ({name: float(a.model_error) for name in adapters} if a.model_error != "auto"
              else load_model_errors(cfg.run_dir, adapters, log))
    results: dict[str, Any] = {
        "experiment": experiment.name, "design": experiment.design, "n_per_arm": experiment.population.n_per_arm,
        "population": experiment.population.model_dump(), "arms": {name: text for name, text in arms},
        "control": experiment.control_arm(), "outcomes": [o.name for o in experiment.outcomes],
        "analysis": a.model_dump(), "planned_n": a.planned_n or experiment.population.n_per_arm, "model_path": model_path, "adapters": adapters, "models": {},
    }
    with simulator(cfg, model_path, adapters, cfg.run_dir / "screen" / "calibration", log, endpoint, token) as sim:
        fingerprint = rows_fingerprint(rows)
        for name in experiment.models:
            keep_only_current(out / "simulate" / name, fingerprint, log)
            table = sim.predict(name, rows, out / "simulate" / name)
            results["models"][name] = {"temperature": sim.temperature(name), "model_error": errors[name],
                                       "outcomes": analyze(experiment, table, errors[name], experiment.population.seed)}
    results["report"] = str(write_screen_report(results, out))
    log("screen: predicted effects (treatment - control, in answer points; interval at "
        f"{a.interval:.0%}, for a human study of {experiment.population.n_per_arm} per arm)\n" + summary_table(results))
    log(f"screen: report {results['report']}, numbers {out / 'screen.json'}")
    return results


def summary_table(results: dict[str, Any]) -> str:
    """The short table printed at the end: one line per model, outcome and contrast."""
    lines = ["| model | outcome | contrast | difference [interval] | d | verdict | humans per arm for "
             f"{results['analysis']['power']:.0%} power | power at n={results['planned_n']} |",
             "|---|---|---|---|---|---|---|---|"]
    for model, m in results["models"].items():
        for outcome, o in m["outcomes"].items():
            for c in o["contrasts"]:
                need = c["humans_per_arm_needed"]
                lines.append(f"| {model} | {outcome} | {c['treatment']} vs {c['control']} | {c['difference']:+.2f} "
                             f"[{c['interval'][0]:+.2f}, {c['interval'][1]:+.2f}] | {c['d']:+.2f} | {c['verdict']} | "
                             f"{need if need is not None else '> 10M'} | {c['power_at_planned_n']:.2f} |")
    return "\n".join(lines)
