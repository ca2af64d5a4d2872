"""The embedded default's base model (model.source=tiny): a tiny Qwen2 and its tokenizer, built offline.

Nothing here downloads: the tokenizer is a byte-level BPE (digits split one per token, as Qwen2
does, so "100" is three tokens) with a Qwen-style chat template, trained on the prompts the model
will be finetuned on (the prepared training split, so a user's own wording gets whole-word tokens)
or, before any data is prepared, on synthetic SocSci-format prompts; the model is a randomly
initialised Qwen2ForCausalLM, the production base's architecture class. Both are saved as an
ordinary Hugging Face folder. The demo, `socrates-ray build-tiny`, the tests and the benches use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, TinyModelSection
from socrates_ray.errors import SocratesError


class TinyModelError(SocratesError, ValueError):
    """model.path holds a tiny model of another shape or seed."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's layout (<|im_start|>role\ncontent<|im_end|>\n) without its default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
STAMP = "socrates_tiny.json"


def synthetic_corpus(rows: int, seed: int = 0) -> Iterator[str]:
    """Prompts and answers from the synthetic generator: the text the tiny model will see."""
    from socrates_ray.data.synthetic import design_studies, generate_study, hash_id

    rng = np.random.default_rng(seed)
    studies = design_studies(max(4, rows // 200), rows, 0.5, rng)
    yield DEFAULT_SYSTEM_PROMPT
    produced = 0
    for study in studies:
        table, _, _ = generate_study(study, np.random.default_rng([seed, hash_id(study.study_id)]), 0.0)
        for prompt, response in zip(table["prompt"].to_pylist(), table["response"].to_pylist()):
            yield f"{prompt}\n{response}"
            produced += 1
            if produced >= rows:
                return


def build_tiny_tokenizer(corpus: Iterator[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """Train a byte-level BPE tokenizer offline and wrap it with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, shape: TinyModelSection, seed: int = 0):  # -> Qwen2ForCausalLM
    """A randomly initialised Qwen2 model sized by `shape`, matched to the tokenizer's ids."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def _fingerprint(shape: TinyModelSection, seed: int) -> str:
    return hashlib.sha256(json.dumps([shape.model_dump(), seed], sort_keys=True).encode()).hexdigest()[:16]


def split_corpus(prepared: str | Path, setting: str, rows: int, seed: int = 0) -> tuple[list[str], str] | None:
    """Up to `rows` prompts + answers drawn from a prepared training split, and a name for them;
    None if the split is not there yet."""
    import glob

    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(Path(prepared) / setting / "train" / "*.parquet")))
    if not files:
        return None
    table = pq.read_table(files, columns=["prompt", "response"])
    pick = sorted(np.random.default_rng(seed).permutation(table.num_rows)[:rows].tolist())
    prompts, answers = table["prompt"].to_pylist(), table["response"].to_pylist()
    texts = [DEFAULT_SYSTEM_PROMPT] + [f"{prompts[i]}\n{answers[i]}" for i in pick]
    return texts, f"{len(pick):,} prompts of {prepared}/{setting}/train"


def ensure_tiny_model(
    path: str | Path, shape: TinyModelSection, seed: int = 0,
    corpus: Callable[[], tuple[list[str], str] | None] | None = None,
) -> Path:
    """Build the tiny model + tokenizer into `path` unless one of the same shape and seed is already there.

    At a build, the tokenizer is trained on what `corpus()` returns (texts and their name, e.g. from
    `split_corpus`) or, when there is none, on synthetic prompts. A built folder is never rebuilt, for
    a new corpus or for another shape or seed: adapters trained on it would silently stop matching
    (a screening run with the test's model path once rebuilt the base under the adapters of the tests
    that followed). Another shape or seed is refused with the way out."""
    folder = Path(path)
    stamp = folder / STAMP
    fingerprint = _fingerprint(shape, seed)
    if stamp.is_file():
        built = json.loads(stamp.read_text())
        if built.get("fingerprint") == fingerprint:
            return folder
        before = {**built.get("shape", {}), "seed": built.get("seed")}
        wanted = {**shape.model_dump(), "seed": seed}
        changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in wanted.items() if before.get(k) != v) or "its fingerprint"
        raise TinyModelError(
            f"{folder} holds a tiny model built with other settings ({changed}; the seed is run.seed). Rebuilding it "
            "would leave every adapter trained on it not matching. Point model.path at another folder for these "
            f"settings, use the folder's settings, or delete {folder} to rebuild it."
        )
    found = corpus() if corpus is not None else None
    text, name = found or (synthetic_corpus(shape.tokenizer_corpus_rows, seed), "synthetic prompts")
    tokenizer = build_tiny_tokenizer(iter(text), shape.vocab_size)
    model = build_tiny_model(tokenizer, shape, seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "shape": shape.model_dump(), "seed": seed, "corpus": name}))
    return folder


def tiny_model_corpus(path: str | Path) -> str | None:
    """What the tiny model's tokenizer at `path` was trained on (None if it was never built)."""
    stamp = Path(path) / STAMP
    return json.loads(stamp.read_text()).get("corpus", "synthetic prompts") if stamp.is_file() else None


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a Hugging Face model folder (or hub id where a network exists)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def adapter_folder_problem(path: str | Path) -> str | None:
    """Why `path` is not a PEFT adapter folder, as the second half of an error message; None when it is."""
    if (Path(path) / "adapter_config.json").is_file():
        return None
    return f"{path} has no adapter_config.json (expected a PEFT adapter folder, e.g. <run>/checkpoint_N/export)"


def folder_digest(*folders: str | Path, salt: str = "") -> str:
    """A short hash of the weight, data and config files under `folders` (safetensors, bin, parquet,
    json): what a run's name or resume fingerprint carries where a folder's path alone would not
    change when its content does (a retrained adapter, new pilot rows). A folder that does not exist
    locally (a hub id, a URI) hashes as its name. `salt`: a digest already taken (of a large folder
    many names share) mixed in instead of reading that folder again."""
    h = hashlib.sha256(salt.encode())
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            h.update(str(folder).encode())
            continue
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".parquet", ".json")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:8]
