"""prepare's counts: what each shard's task reports (FileStats), merged into summary.json, and the
lines prepare prints from it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from socrates_ray.data.prepared import EMPTY_SPLIT
from socrates_ray.data.schema import REASONS
from socrates_ray.data.splits import SETTING_FILES, SPLITS, Splits


@dataclass
class FileStats:
    """What one shard's task reports back to the driver."""

    rows_in: int = 0
    rows_kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    split_rows: Counter = field(default_factory=Counter)  # "setting/split" -> rows
    # (study, condition, task) -> Counter of (kind, low, high) over its kept rows
    cells: dict[tuple[str, int, int], Counter] = field(default_factory=dict)
    split_cells: dict[str, set] = field(default_factory=dict)  # "setting/split" -> cells
    prompt_matches: int = 0


def merge_stats(all_stats: list[FileStats]) -> FileStats:
    total = FileStats()
    for s in all_stats:
        total.rows_in += s.rows_in
        total.rows_kept += s.rows_kept
        total.reasons.update(s.reasons)
        total.split_rows.update(s.split_rows)
        total.prompt_matches += s.prompt_matches
        for cell, kinds in s.cells.items():
            total.cells.setdefault(cell, Counter()).update(kinds)
        for key, cells in s.split_cells.items():
            total.split_cells.setdefault(key, set()).update(cells)
    return total


def summarize(total: FileStats, splits: Splits, settings: list[str], files: int, seconds: float) -> dict[str, Any]:
    """The prepare summary: counts, reasons, scale-parse coverage, per-setting split sizes."""
    n_cells = len(total.cells)
    consistent = {c: k for c, k in total.cells.items() if len(k) == 1}
    kinds = Counter(next(iter(k))[0] for k in consistent.values())
    bounded_rows = sum(n for k in total.cells.values() for (kind, _, _), n in k.items() if kind == "bounded")
    open_rows = sum(n for k in total.cells.values() for (kind, _, _), n in k.items() if kind == "open")
    return {
        "rows_in": total.rows_in,
        "rows_kept": total.rows_kept,
        "rows_quarantined": sum(total.reasons.values()),
        "quarantine_reasons": dict(sorted(total.reasons.items(), key=lambda kv: -kv[1])),
        "studies": len({c[0] for c in total.cells}),
        "cells": n_cells,
        "scale_coverage": {
            "cells_bounded": kinds["bounded"],
            "cells_open": kinds["open"],
            "cells_unknown": kinds["unknown"],
            "cells_mixed_scales": n_cells - len(consistent),
            "share_cells_parsed": round((kinds["bounded"] + kinds["open"]) / n_cells, 4) if n_cells else 0.0,
            "share_rows_bounded": round(bounded_rows / total.rows_kept, 4) if total.rows_kept else 0.0,
            "share_rows_open": round(open_rows / total.rows_kept, 4) if total.rows_kept else 0.0,
        },
        "prompt_builder_match": round(total.prompt_matches / total.rows_kept, 4) if total.rows_kept else 0.0,
        "settings": {
            s: {
                split: {
                    "rows": total.split_rows.get(f"{s}/{split}", 0),
                    "cells": len(total.split_cells.get(f"{s}/{split}", ())),
                    "studies": len({c[0] for c in total.split_cells.get(f"{s}/{split}", ())}),
                }
                for split in SPLITS
            }
            | {"source": splits.sources.get(s, "rows every other setting trains on (train) / holds out (eval)")}
            for s in settings
        },
        "split_files_name_absent_studies": splits.missing_studies,
        "warnings": [
            f"{s}/{split} has no rows: {EMPTY_SPLIT[split]}"
            for s in settings for split in SPLITS
            if not total.split_rows.get(f"{s}/{split}", 0) and (split != "val" or splits.validation_fraction > 0)
        ],
        "input_files": files,
        "seconds": round(seconds, 2),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the lines prepare prints."""
    cov = summary["scale_coverage"]
    lines = [
        f"rows in {summary['rows_in']:,} = kept {summary['rows_kept']:,} + quarantined {summary['rows_quarantined']:,}"
        f"   ({summary['studies']} studies, {summary['cells']} cells, {summary['seconds']}s)",
        f"answer scales: {cov['share_cells_parsed']:.1%} of cells parsed "
        f"({cov['cells_bounded']} bounded, {cov['cells_open']} open-ended, {cov['cells_unknown']} unknown, "
        f"{cov['cells_mixed_scales']} mixed)",
        f"prompts the persona builder reproduces byte for byte: {summary['prompt_builder_match']:.1%}",
    ]
    for reason, n in summary["quarantine_reasons"].items():
        lines.append(f"  quarantined {n:>8,}  {reason}: {REASONS[reason]}")
    for setting, parts in summary["settings"].items():
        lines.append(
            f"{setting:<18} train {parts['train']['rows']:>9,} rows / {parts['train']['studies']:>3} studies   "
            f"val {parts['val']['rows']:>7,} rows / {parts['val']['cells']:>4} cells   "
            f"eval {parts['eval']['rows']:>9,} rows / {parts['eval']['studies']:>3} studies / {parts['eval']['cells']:>5} cells"
            f"   [{parts['source']}]"
        )
    for setting, absent in summary["split_files_name_absent_studies"].items():
        if absent:
            lines.append(f"warning: {SETTING_FILES[setting]} names {len(absent)} studies not in the data, e.g. {absent[:3]}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)
