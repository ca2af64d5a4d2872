"""The evaluation's outputs: metrics.json, report.md and its PNG plots.

Plots are what a researcher looks at first: human vs predicted answer histograms for the best
and worst cells of the finetuned model, and the Wasserstein per study for base vs finetuned
against the uniform guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from socrates_ray.eval.results import EvaluationResult, ParityCheck, to_json
from socrates_ray.plots import new_figure, save_png


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _fmt_corr(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _fmt_gap(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def results_table(results: EvaluationResult) -> str:
    """The paper-style table: one row per setting, uniform / base / finetuned / anchor / floors, the
    share of the uniform-to-floor gap each model closes, and how much predictions differ across cells."""
    lines = [
        "| setting | cells | uniform | base | finetuned | anchor | floor (resampling) | floor (true dist.) | finetuned vs base "
        "| gap closed: finetuned / anchor | uniform's distance to the truth removed: finetuned / anchor "
        "| persona reading: finetuned / anchor | persona spread: finetuned / anchor / truth | cell spread: finetuned / human |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, r in results.settings.items():
        b, models, versus = r.baselines, r.models, r.comparison.finetuned_vs_base
        w = {name: m.wasserstein for name, m in models.items()}
        rel = versus.improvement if versus else None
        gaps = " / ".join(_fmt_gap(r.comparison.gap_closed(n)) for n in ("finetuned", "anchor"))
        removed = " / ".join(f"{models[n].vs_truth.removed:.2f}" if n in models and models[n].vs_truth else "-" for n in ("finetuned", "anchor"))
        persona = " / ".join(_fmt_corr(models[n].persona_reading if n in models else None) for n in ("finetuned", "anchor"))
        readings = {n: models[n].vs_truth.persona if n in models and models[n].vs_truth else None for n in ("finetuned", "anchor")}
        true_spread = next((p.true_spread for p in readings.values() if p is not None), None)
        persona_spread = " / ".join(_fmt(p.spread if p else None) for p in readings.values()) + f" / {_fmt(true_spread)}"
        main = models.get("finetuned", models.get("base"))
        spread = main.cell_spread if main else None
        lines.append(
            f"| {setting} | {main.cells if main else '-'} | {_fmt(b.uniform.wasserstein)} | "
            f"{_fmt(w.get('base'))} | {_fmt(w.get('finetuned'))} | {_fmt(w.get('anchor'))} | "
            f"{_fmt(b.floor.wasserstein)} | {_fmt(b.true_floor.wasserstein if b.true_floor else None)} | "
            f"{'-' if rel is None else f'{rel:+.1%}'} | {gaps} | {removed} | {persona} | {persona_spread} | "
            f"{_fmt(spread.predicted if spread else None)} / {_fmt(spread.human if spread else None)} |"
        )
    return "\n".join(lines)


def past_floor_note(results: EvaluationResult) -> str | None:
    """Where a model's W is below the resampling floor (gap closed > 1, no true distributions): say why."""
    past = []
    for setting, r in results.settings.items():
        if r.comparison.floor_used_for_gap != "floor":
            continue
        gaps = [r.comparison.gap_closed(n) for n in r.models]
        if any(g is not None and g > 1 for g in gaps):
            past.append(f"{setting} (median {r.baselines.floor.answers_per_cell} answers a cell)")
    if not past:
        return None
    return ("gap closed above 1 on " + ", ".join(past) + ": the models' W is below the resampling floor, which at so few "
            "answers a cell is mostly the noise of resampling them; score more answers a cell (simulate.max_per_cell, "
            "null = all) for a gap that means what the paper's does")


def fit_check_line(results: EvaluationResult) -> str | None:
    """Can the finetuned model fit what it saw? Its W on training cells against uniform's there."""
    fit = results.fit_check
    if not fit:
        return None
    parts = [f"{name} {_fmt(fit.models[name].wasserstein)}" for name in ("base", "finetuned", "anchor") if name in fit.models]
    parts.append(f"uniform {_fmt(fit.uniform)}")
    if fit.true_floor is not None:
        parts.append(f"true distributions {_fmt(fit.true_floor)}")
    ratio = ""
    tuned = fit.models.get("finetuned")
    if tuned and tuned.wasserstein is not None and fit.uniform:
        ratio = f" (finetuned = {tuned.wasserstein / fit.uniform:.2f} x uniform"
        if fit.true_floor is not None:
            # with a handful of answers a cell, even the true distributions are far from the sample
            ratio += f", the true distributions {fit.true_floor / fit.uniform:.2f} x"
        if tuned.cell_spread and tuned.cell_spread.predicted is not None:
            ratio += f"; cell spread {tuned.cell_spread.predicted:.3f} vs human {tuned.cell_spread.human:.3f}"
        ratio += ")"
    if tuned and tuned.vs_truth:
        ratio += (f"; against the true distributions of the same participants the finetuned model removes "
                  f"{tuned.vs_truth.removed:.0%} of uniform's distance")
        if tuned.vs_truth.persona and tuned.vs_truth.persona.within_cell_corr is not None:
            ratio += f", persona reading {tuned.vs_truth.persona.within_cell_corr:+.2f}"
    return f"Fit check on {fit.cells} cells ({fit.rows:,} rows) of {fit.split}: W " + ", ".join(parts) + ratio + "."


def _hist(ax: Any, human: np.ndarray, options: np.ndarray, probs: np.ndarray, title: str) -> None:
    lo, hi = int(min(human.min(), options.min())), int(max(human.max(), options.max()))
    support = np.arange(lo, hi + 1)
    h = np.array([(human == v).mean() for v in support])
    m = np.array([probs[options == v].sum() for v in support])
    ax.bar(support - 0.2, h, width=0.4, label="human")
    ax.bar(support + 0.2, m, width=0.4, label="finetuned")
    ax.set_title(title, fontsize=8)
    ax.set_xticks(support if len(support) <= 11 else support[:: max(1, len(support) // 10)])


def cell_picks(predictions: Any, per_cell: dict[str, float], k: int = 3) -> list[tuple[str, str, float, list[dict[str, Any]]]]:
    """(label, cell, W, rows) for the k best and k worst cells that have predicted distributions:
    open-ended cells are scored from sampled answers (no probs) and have no histogram to draw."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in predictions.to_pylist():
        if r["probs"] is not None:
            by_cell.setdefault(f"{r['study_id']}|{r['condition_num']}|{r['task_num']}", []).append(r)
    ranked = sorted((v, c) for c, v in per_cell.items() if v is not None and c in by_cell)
    best, worst = ranked[:k], ranked[max(k, len(ranked) - k):]  # no cell twice where there are few
    return [(label, c, v, by_cell[c]) for label, picked in (("best", best), ("worst", worst)) for v, c in picked]


def plot_cells(predictions: Any, per_cell: dict[str, float], out: Path, k: int = 3) -> Path | None:
    """Human vs predicted histograms of the k best and k worst cells (exact-mode predictions), saved to `out`."""
    if not per_cell or "probs" not in predictions.column_names:
        return None
    picks = cell_picks(predictions, per_cell, k)
    if not picks:
        return None
    fig, axes = new_figure(4 * k, 6, 2, k)
    for ax, (label, cell, w, members) in zip(axes.flat, picks):
        study, cond, task = cell.split("|")
        options = np.asarray(members[0]["options"])
        probs = np.mean([r["probs"] for r in members], axis=0)
        _hist(ax, np.asarray([r["response"] for r in members]), options, probs, f"{label}: {study} c{cond} t{task}  W={w:.3f}")
    for ax in axes.flat[len(picks):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    save_png(fig, out)
    return out


def plot_studies(base: dict[str, float], finetuned: dict[str, float], uniform: dict[str, float], out: Path, title: str) -> Path:
    """W per study for base and finetuned against the uniform guess, saved to `out`."""
    studies = sorted(set(base) | set(finetuned))
    x = np.arange(len(studies))
    fig, axes = new_figure(max(6, 0.5 * len(studies) + 2), 3.5)
    ax = axes[0][0]
    ax.bar(x - 0.2, [base.get(s, np.nan) for s in studies], width=0.4, label="base")
    ax.bar(x + 0.2, [finetuned.get(s, np.nan) for s in studies], width=0.4, label="finetuned")
    ax.scatter(x, [uniform.get(s, np.nan) for s in studies], color="black", marker="_", s=200, label="uniform guess", zorder=3)
    ax.set_xticks(x, studies, rotation=60, fontsize=7)
    ax.set_ylabel("Wasserstein (lower is better)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    save_png(fig, out)
    return out


def parity_table(p: ParityCheck) -> str:
    """The parity check as markdown: per field, the humans' subgroup gap and each model's (error in brackets)."""
    names = list(p.errors)
    lines = [f"Demographic parity on {p.cells} cells of {p.split} with the most answers ({p.rows:,} rows, groups of >= "
             f"{p.min_group} people): the subgroup gap (spread of the groups' mean answers on the 0-1 range) of the humans "
             "and of each model, |model - human| in brackets. Subgroup gap error (lower is better): "
             + ", ".join(f"{n} {_fmt(v)}" for n, v in p.errors.items())
             + (f"; finetuned vs base {p.change:+.0%}" if p.change is not None else "") + ".", "",
             "| field | cells | humans | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for field, f in p.fields.items():
        cols = [f"{_fmt(f.gaps.get(n))} ({_fmt(f.errors.get(n))})" for n in names]
        lines.append(f"| {field} | {f.cells} | {_fmt(f.human_gap)} | " + " | ".join(cols) + " |")
    if p.note:
        lines.append(f"\n{p.note}.")
    return "\n".join(lines)


def temperature_line(results: EvaluationResult) -> str | None:
    """What temperature each model's exact distributions used, and how it was chosen."""
    if results.mode != "exact" or not results.temperature:
        return None
    parts = []
    for name, t in results.temperature.items():
        fit = results.calibration.get(name)
        if fit and fit.temperature is not None:
            parts.append(f"{name} T={t:.2f} (fitted on {fit.rows:,} rows of {fit.split}: NLL {fit.nll_at_1:.4f} at T=1 -> {fit.nll:.4f})")
        else:
            parts.append(f"{name} T={t:.2f} (set in simulate.temperature)")
    return "Exact-mode temperature: " + "; ".join(parts) + "."


def write_report(results: EvaluationResult, folder: Path, predictions: dict[str, Any]) -> Path:
    """metrics.json + report.md + plots in `folder`; `predictions` maps setting -> finetuned table."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(to_json(results))
    lines = [
        "# socrates_ray evaluation",
        "",
        f"Model: `{results.model}`; finetuned adapter: `{results.adapter}`; mode: {results.mode}.",
        "Wasserstein as the paper defines it (Kolluri et al., EMNLP 2025, section 5: cells rescaled by the human min/max, "
        "macro average cell -> study -> overall); "
        "lower is better. *Gap closed* = (W_uniform - W_finetuned) / (W_uniform - W_floor), with the true-distribution "
        "floor where the data is synthetic.",
        "",
        results_table(results),
        "",
    ]
    if line := past_floor_note(results):
        lines += [line[0].upper() + line[1:] + ".", ""]
    if line := temperature_line(results):
        lines += [line, ""]
    if line := fit_check_line(results):
        lines += [line, ""]
    if results.anchor:
        a = results.anchor
        lines += [f"Regression anchor: ridge on persona fields + stimulus words and their party/ideology/age interactions "
                  f"({a.features:,} features), fitted on {a.trained_on}; alpha {a.alpha:g} and spread {a.spread:g} "
                  f"chosen on the validation split.", ""]
    for setting, r in results.settings.items():
        lines.append(f"## {setting}")
        lines.append("")
        for name, m in r.models.items():
            lines.append(
                f"- **{name}**: W {m.wasserstein:.4f} ({m.cells_exact} of {m.cells} cells from full distributions), "
                f"W sampled {m.wasserstein_sampled or float('nan'):.4f}, "
                f"accuracy {m.accuracy:.4f}, subgroup gap error "
                + (f"{m.subgroup_gap_error:.4f}, " if m.subgroup_gap_error is not None else
                   "not measurable here (no cell has two groups of 3 people among the answers scored: see the parity check), ")
                + f"{m.unparsable} unparsable of {m.rows} rows"
            )
        lines.append(f"- uniform guess: W {r.baselines.uniform.wasserstein:.4f}, accuracy {r.baselines.uniform.accuracy:.4f}")
        for name, m in r.models.items():
            spread = m.cell_spread
            if spread.predicted is not None:
                lines.append(f"- cell spread ({name}): predicted cell means differ by {spread.predicted:.3f} (sd of the mean "
                             f"position within a scale, {spread.scales} scales); the humans' by {spread.human:.3f}")
        for name, gain in r.comparison.models.items():
            lines.append(f"- {name}: improvement over uniform (denominator: W_uniform) = {_fmt_signed(gain.improvement_over_uniform)}, "
                         f"gap closed (W_uniform - W) / (W_uniform - W_floor) = {_fmt_signed(gain.gap_closed)}")
        if versus := r.comparison.finetuned_vs_base:
            lines.append(f"- finetuned vs base: improvement (denominator: W_base) = {_fmt_signed(versus.improvement)}, "
                         f"improvement (denominator: W_finetuned) = {_fmt_signed(versus.improvement_over_finetuned)}, "
                         "subgroup gap error change (denominator: base) = " + (
                             _fmt_signed(versus.subgroup_gap_error_change) if versus.subgroup_gap_error_change is not None
                             else "not measurable in this pass (see the parity check)"))
        if r.parity is not None:
            lines += ["", parity_table(r.parity), ""]
        models = r.models
        if "base" in models and "finetuned" in models:
            png = plot_studies(models["base"].per_study, models["finetuned"].per_study, r.baselines.uniform.per_study,
                               folder / f"{setting}_studies.png", f"{setting}: Wasserstein per study")
            lines.append(f"\n![per study]({png.name})\n")
        if setting in predictions and "finetuned" in models:
            png = plot_cells(predictions[setting], models["finetuned"].per_cell, folder / f"{setting}_cells.png")
            if png:
                lines.append(f"![best and worst cells]({png.name})\n")
    lines += [
        "## Definitions",
        "",
        "- *subgroup gap error* (socrates_ray's demographic parity measure): per cell and demographic field, the spread of "
        "mean rescaled answers across groups (>= 3 people each); the error is |model spread - human spread|, averaged over "
        "fields, then cells -> studies -> overall. Lower means subgroup differences are reproduced.",
        "- *W exact*: humans vs the mixture of every participant's full predicted distribution; *W sampled*: one answer drawn "
        "per participant (the paper's protocol when sampling).",
        "- *uniform's distance to the truth removed* (synthetic data only): 1 - W(model, true distribution) / W(uniform, true "
        "distribution), both on the scale's own 0-1 range, macro over cells -> studies. *Gap closed* is measured against the "
        "sampled humans and grows when fewer participants per cell are scored (the floor rises faster than the models' W); "
        "this one has no answer noise and, where the generator's per-participant truth exists (ground_truth_rows.parquet), "
        "compares with the true distributions of exactly the participants scored, so it does not depend on how many were: "
        "1 means the model's pooled distribution is the truth's.",
        "- *persona reading* (synthetic data only): within each cell (one stimulus) the participants differ only by persona; "
        "the correlation, pooled over cells, of each participant's predicted mean answer (as a position on the scale) with "
        "their true mean, both centred on the cell. 0 = one prediction per stimulus whatever the persona; 1 = participants "
        "ordered as the truth orders them. A model can match the pooled distributions while reading no persona.",
        "- *persona spread* (synthetic data only): the standard deviation of those centred mean positions (0-1 scale), the "
        "model's and the truth's. A model can order participants rightly and still move them too little. The truth's "
        "includes each participant's unobserved effect, which no reading of the persona recovers, so even a perfect "
        "reader stays below it; the anchor's is the reference a regression reaches.",
    ]
    report = folder / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
