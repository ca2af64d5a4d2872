"""Is this LoRA adapter folder usable on this base model? Checked before a load touches the model.

    problem = adapter_problem("runs/demo/checkpoint_000750/export", base_shapes("runs/tiny-model"))
    check_adapter("finetuned", folder, "runs/tiny-model")   # raises AdapterUnusable(problem)

Every engine calls `check_adapter` before it loads an adapter, so serve, simulate, evaluate, screen
and pilots refuse a broken adapter with the same message instead of a PyTorch traceback, and a load
that could only fail half way never starts. What is checked, reading no tensor data:

- the folder is a directory holding a parseable `adapter_config.json` (a LoRA config with a rank)
  and a weights file (`adapter_model.safetensors`, or a legacy `adapter_model.bin`);
- the safetensors file is whole: its header parses and its tensors' byte ranges end exactly at the
  file's end (a truncated or cut-short file fails here, never in the middle of an injection);
- every tensor belongs to a module the base model has, with the shapes that module implies (LoRA A
  and B of the config's rank; a saved embedding or output layer of the base's vocabulary): an
  adapter trained on another base says which base and vocabulary it needs;
- the modules the config targets are exactly the modules the weights cover (an edited
  `target_modules` would otherwise load "successfully" and answer as the base model).

The base's module shapes come from its config alone (a model built on PyTorch's meta device: no
weights read), cached per model folder. `base_vocab` reads the vocabulary alone, without torch: the
preflight's check before a command starts anything.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socrates_ray.infer.engine import ScoreError
from socrates_ray.models import adapter_folder_problem

WEIGHTS = "adapter_model.safetensors"
LEGACY_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."
# bytes per element of each safetensors dtype
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 2**20


class AdapterUnusable(ScoreError):
    """An adapter folder that cannot be used on this base: the message names it and says why."""


@dataclass(frozen=True)
class BaseShapes:
    """What an adapter must fit: the base model's name, vocabulary, and each module's kind and shape
    ("linear": (in_features, out_features); "embedding": (num_embeddings, embedding_dim))."""

    name: str
    vocab: int | None
    modules: dict[str, tuple[str, int, int]] | None  # None: the vocabulary alone is known (base_vocab)


@functools.lru_cache(maxsize=8)
def base_shapes(model_path: str) -> BaseShapes | None:
    """The module shapes of the model at `model_path`, from its config on the meta device; None where
    the config cannot be read here (a hub id with no local copy): only the folder checks then run."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an unreadable base is the engine's error to report, not the adapter's
        return None
    modules: dict[str, tuple[str, int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            modules[name] = ("linear", module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            modules[name] = ("embedding", module.num_embeddings, module.embedding_dim)
    return BaseShapes(str(model_path), getattr(config, "vocab_size", None), modules)


def base_vocab(model_path: str) -> BaseShapes | None:
    """The base's name and vocabulary from its config.json alone, without importing torch (the
    preflight's check: an adapter of another base is refused before anything loads); None where the
    folder has no readable config."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    vocab = config.get("vocab_size") if isinstance(config, dict) else None
    return BaseShapes(str(model_path), vocab if isinstance(vocab, int) else None, None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Problem(f"{path.name} is not readable JSON ({type(e).__name__}: {e})") from None


class _Problem(Exception):
    pass


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes from a safetensors file's header, after checking that the file is whole
    (its byte ranges cover the data section exactly). Raises _Problem saying what is wrong."""
    if not path.is_file():  # a dangling link, a folder, a device
        raise _Problem(f"{path.name} is not a regular file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _Problem(f"{path.name} is truncated ({size} bytes: not even a header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise _Problem(f"{path.name} is truncated or not safetensors (a header of {length} bytes in a file of {size})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Problem(f"{path.name}'s header is not valid JSON: the file is damaged") from None
    if not isinstance(header, dict):
        raise _Problem(f"{path.name}'s header is not a table of tensors")
    shapes, end = {}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in entry["shape"])
            start, stop = (int(o) for o in entry["data_offsets"])
            itemsize = _ITEMSIZE[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise _Problem(f"{path.name}: tensor {key!r} has a malformed header entry") from None
        if stop - start != math.prod(shape) * itemsize or start < 0:
            raise _Problem(f"{path.name}: tensor {key!r} of shape {list(shape)} does not match its byte range")
        shapes[key], end = shape, max(end, stop)
    if 8 + length + end != size:
        raise _Problem(f"{path.name} is truncated or padded: its tensors need {8 + length + end} bytes, the file has {size}")
    return shapes


def _legacy_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _Problem(f"{path.name} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise _Problem(f"{path.name} does not hold a table of tensors")
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


# the piece of a saved key after the module path, and what it is
_PIECES = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_embedding_A": "A", "lora_embedding_B": "B",
           "base_layer.weight": "base", "weight": "base", "lora_magnitude_vector": "magnitude"}


def _split_key(key: str) -> tuple[str, str] | None:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> ('model.layers.0.self_attn.q_proj', 'A')."""
    if not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX):]
    for piece in sorted(_PIECES, key=len, reverse=True):
        if rest.endswith("." + piece):
            return rest[: -len(piece) - 1], _PIECES[piece]
    return None


def _targeted(targets: Any, modules: dict[str, tuple[str, int, int]]) -> set[str] | None:
    """The base's modules that `target_modules` selects, as peft matches it (a list: the name or its
    last dotted parts; a string: a full regex match); None for selections this check does not model."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return None
        try:
            pattern = re.compile(targets)
        except re.error:
            raise _Problem(f"adapter_config.json's target_modules {targets!r} is not a valid pattern") from None
        return {m for m in modules if pattern.fullmatch(m)}
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        return {m for m in modules if any(m == t or m.endswith("." + t) for t in targets)}
    raise _Problem(f"adapter_config.json's target_modules must be a list of module names; got {targets!r}")


def _rank_of(config: dict[str, Any]) -> int | None:
    """The rank every LoRA layer has (None where a rank_pattern gives some modules another)."""
    return None if config.get("rank_pattern") else int(config["r"])


def _fits(piece: str, shape: tuple[int, ...], kind: str, a: int, b: int, rank: int | None) -> bool:
    """Whether a saved tensor's shape is what `piece` of a LoRA layer on this module implies."""
    if len(shape) != 2:
        return piece == "magnitude"
    if kind == "linear":  # a = in_features, b = out_features; lora_A (r, in), lora_B (out, r), weight (out, in)
        expected = {"A": (rank, a), "B": (b, rank), "base": (b, a)}.get(piece)
    else:  # embedding: a = num_embeddings, b = dim; lora_embedding_A (r, num), lora_embedding_B (dim, r), weight (num, dim)
        expected = {"A": (rank, a), "B": (b, rank), "base": (a, b)}.get(piece)
    if expected is None:
        return True
    return all(e is None or e == s for e, s in zip(expected, shape))


def _adapter_vocabs(shapes: dict[str, tuple[int, ...]]) -> set[int]:
    """The vocabulary sizes an adapter's embedding and output-layer tensors imply (empty where it has none)."""
    found = set()
    for key, shape in shapes.items():
        split = _split_key(key)
        if split is None or len(shape) != 2:
            continue
        module, piece = split
        if module.endswith("embed_tokens") and piece in ("A", "base"):
            found.add(shape[1] if piece == "A" else shape[0])
        elif module.endswith("lm_head") and piece in ("B", "base"):
            found.add(shape[0])
    return found


def adapter_problem(path: str | Path, base: BaseShapes | None) -> str | None:
    """Why the adapter folder at `path` cannot be used on `base` (the second half of an error
    message), or None when it can. `base` None: the folder checks only."""
    folder = Path(path)
    if not folder.is_dir():
        return f"{folder} does not exist (expected a PEFT adapter folder, e.g. <run>/checkpoint_N/export)"
    try:
        if (missing := adapter_folder_problem(folder)) is not None:
            raise _Problem(missing)
        config = _read_json(folder / "adapter_config.json")
        if not isinstance(config, dict):
            raise _Problem("adapter_config.json is not a JSON object")
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise _Problem(f"adapter_config.json's peft_type is {config.get('peft_type')!r}; only LoRA adapters are served")
        r = config.get("r")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise _Problem(f"adapter_config.json's rank r must be a positive integer; got {r!r}")
        if (folder / WEIGHTS).exists() or (folder / WEIGHTS).is_symlink():
            shapes = safetensors_shapes(folder / WEIGHTS)
        elif (folder / LEGACY_WEIGHTS).exists():
            shapes = _legacy_shapes(folder / LEGACY_WEIGHTS)
        else:
            raise _Problem(f"{folder} has no weights ({WEIGHTS})")
        if not shapes:
            raise _Problem(f"{WEIGHTS} holds no tensors")
        if base is not None:
            _match_base(config, shapes, base)
    except _Problem as problem:
        return str(problem)
    return None


def _match_base(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], base: BaseShapes) -> None:
    trained_on = config.get("base_model_name_or_path") or "an unnamed base"
    vocab = next(iter(sorted(_adapter_vocabs(shapes) - {base.vocab})), None)
    if vocab is not None and base.vocab is not None:
        raise _Problem(f"it was trained on base {trained_on!r} (vocab {vocab}); this base is {base.name!r} (vocab {base.vocab}): "
                       "use it on the base it was trained on (model.path), or train it again on this one")
    if base.modules is None:
        return
    covered: set[str] = set()
    for key, shape in shapes.items():
        split = _split_key(key)
        if split is None:
            raise _Problem(f"tensor {key!r} is not a LoRA tensor of this format (expected names under {PREFIX!r})")
        module, piece = split
        if module not in base.modules:
            raise _Problem(f"tensor {key!r} is for module {module!r}, which base {base.name!r} does not have "
                           f"(the adapter was trained on {trained_on!r})")
        kind, a, b = base.modules[module]
        if not _fits(piece, shape, kind, a, b, _rank_of(config)):
            raise _Problem(f"tensor {key!r} has shape {list(shape)}, which does not fit {module!r} of base {base.name!r} "
                           f"({kind} {a} x {b}) at rank {config['r']}: it was trained on {trained_on!r}, or the file was edited")
        if piece in ("A", "B"):
            covered.add(module)
    targeted = _targeted(config.get("target_modules"), base.modules)
    if targeted is not None and targeted != covered:
        missing, extra = sorted(targeted - covered), sorted(covered - targeted)
        said = []
        if missing:
            said.append(f"targets {len(missing)} module(s) its weights do not hold (e.g. {missing[0]!r})")
        if extra:
            said.append(f"holds weights for {len(extra)} module(s) it does not target (e.g. {extra[0]!r})")
        raise _Problem(f"adapter_config.json's target_modules do not match the weights: it {' and '.join(said)}")


def check_adapter(name: str, path: str | Path, model_path: str | None) -> None:
    """Raise AdapterUnusable naming the adapter and what is wrong, unless the folder at `path` is a
    whole LoRA adapter that fits the base at `model_path` (None: the folder checks only)."""
    base = base_shapes(str(model_path)) if model_path is not None else None
    if (problem := adapter_problem(path, base)) is not None:
        raise AdapterUnusable(f"adapter {name!r} cannot be used: {problem}")
