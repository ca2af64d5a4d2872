"""Reading raw SocSci210 shards for prepare: where they are (a local folder or any fsspec URL),
whether each one has the columns and types prepare can read, the split files under metadata/, and
pass 1 (the key scan: duplicate (study, sample) keys and each study's conditions and tasks).

Every problem is a PrepareError that names the file, what was expected and how to fix it.
"""

from __future__ import annotations

import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.data.schema import RAW_SCHEMA, REQUIRED_COLUMNS, as_int
from socrates_ray.data.splits import SETTING_FILES, StudyKeys
from socrates_ray.errors import SocratesError

KEY_COLUMNS = ("study_id", "sample_id", "participant", "condition_num", "task_num")


class PrepareError(SocratesError, ValueError):
    """Input that prepare cannot read; the message says what was expected and how to fix it."""



# ---------------------------------------------------------------------------------------------
# Input discovery
# ---------------------------------------------------------------------------------------------


# The package extra that brings a URL scheme's fsspec filesystem (pyproject's optional dependencies).
SCHEME_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def open_source(raw: str) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """The filesystem, root and sorted Parquet shards of `data.raw` (local path or fsspec URL)."""
    try:
        fs, root = fsspec.core.url_to_fs(raw)
    except ImportError as exc:
        extra = SCHEME_EXTRAS.get(raw.split("://", 1)[0].lower())
        fix = f"pip install 'socrates_ray[{extra}]'" if extra else "install the fsspec filesystem for this URL scheme"
        raise PrepareError(f"data.raw: cannot open {raw!r}: its filesystem is not installed ({exc}); {fix}") from None
    except ValueError as exc:
        raise PrepareError(f"data.raw: cannot open {raw!r} ({exc}); use a local folder or an fsspec URL such as hf://datasets/socratesft/SocSci210") from None
    if not fs.exists(root):
        raise PrepareError(
            f"data.raw: {raw} does not exist (expected a folder of SocSci210 Parquet shards); "
            f"make one with `socrates-ray synth --out {raw}` or point data.raw at the dataset"
        )
    if fs.isfile(root):
        files = [root] if root.endswith(".parquet") else []
    else:
        files = sorted(p for p in fs.find(root) if p.endswith(".parquet") and "/metadata/" not in p and not posixpath.basename(p).startswith("ground_truth"))
    if not files:
        raise PrepareError(f"data.raw: no Parquet files under {raw} (expected *.parquet shards, e.g. data/train-00000-of-00017.parquet)")
    return fs, root, files


def read_metadata(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str | None]:
    """Text of each split file under <root>/metadata/, None where absent."""
    out: dict[str, str | None] = {}
    for name in SETTING_FILES.values():
        path = posixpath.join(root, "metadata", name)
        out[name] = fs.cat_file(path).decode() if fs.isdir(root) and fs.exists(path) else None
    return out


def open_parquet(fs: fsspec.AbstractFileSystem, path: str) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(fs.open(path, "rb"))
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepareError(f"data.raw: {path} is not a readable Parquet file ({exc}); re-download or remove it") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise PrepareError(
            f"data.raw: {path} lacks columns {missing} (has {sorted(names)}); "
            f"expected SocSci210's columns {list(REQUIRED_COLUMNS)} (+ optional reasoning and prompt)"
        )
    for name in REQUIRED_COLUMNS:
        arrow_type = pf.schema_arrow.field(name).type
        accepted, expected = _COLUMN_KINDS.get(name, _INTEGER_COLUMN)
        if not any(check(arrow_type) for check in accepted):
            raise PrepareError(
                f"data.raw: {path}: column {name!r} is {arrow_type}; expected {expected} "
                f"(SocSci210: {RAW_SCHEMA.field(name).type}); cast the column and re-export the shard"
            )
    return pf


# What each required column may be stored as: what validate_row can read a value from (numbers as
# text, a demographic as an Arrow map or JSON text). Anything else would quarantine every row.
_TEXT = (pa.types.is_string, pa.types.is_large_string)
_INTEGER_COLUMN = ((pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, *_TEXT), "an integer (or numeric text)")
_COLUMN_KINDS = {
    "study_id": ((*_TEXT, pa.types.is_integer), "text"),
    "stimuli": (_TEXT, "text"),
    "demographic": ((pa.types.is_struct, pa.types.is_map, *_TEXT), "a struct of the 16 demographic fields (or a map, or JSON text)"),
}


# ---------------------------------------------------------------------------------------------
# Pass 1: keys
# ---------------------------------------------------------------------------------------------


def _ints(array: pa.ChunkedArray) -> list[int | None]:
    values = array.to_pylist()
    if pa.types.is_integer(array.type):
        return values
    return [as_int(v) for v in values]


def scan_keys(fs: fsspec.AbstractFileSystem, files: list[str]) -> tuple[dict[str, StudyKeys], dict[int, set[int]]]:
    """Per-study keys and, per file index, the row indices that repeat an earlier (study, sample)."""
    studies: dict[str, StudyKeys] = {}
    seen: set[tuple[str, int]] = set()
    duplicates: dict[int, set[int]] = {}
    for file_index, path in enumerate(files):
        pf = open_parquet(fs, path)
        try:
            table = pf.read(columns=list(KEY_COLUMNS))
        except (pa.ArrowInvalid, OSError) as exc:
            raise PrepareError(f"data.raw: cannot read {path} ({exc})") from None
        study_ids = [None if s is None else str(s).strip() for s in table["study_id"].to_pylist()]
        sample_ids, participants, conds, tasks = (_ints(table[c]) for c in ("sample_id", "participant", "condition_num", "task_num"))
        for row, (study_id, sample_id, person, cond, task) in enumerate(zip(study_ids, sample_ids, participants, conds, tasks)):
            if not study_id or sample_id is None or person is None or cond is None or task is None:
                continue
            key = (study_id, sample_id)
            if key in seen:
                duplicates.setdefault(file_index, set()).add(row)
                continue
            seen.add(key)
            keys = studies.setdefault(study_id, StudyKeys())
            keys.conditions.add(cond)
            keys.tasks.add(task)
            keys.sample_ids.append(sample_id)
            keys.participants.setdefault(person, set()).add((cond, task))
    return studies, duplicates
