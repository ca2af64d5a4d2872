"""Offline tiny model and tokenizer builders, used by tests and the demo.

Nothing here downloads: the tokenizer is a byte-level BPE trained on synthetic SocSci-format
prompts (digits split one per token, as Qwen2 does, so "100" is three tokens), with a Qwen-style
chat template; the model is a randomly initialised Qwen2ForCausalLM, the production base's
architecture class. Both are saved as an ordinary Hugging Face folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, TinyModelSection

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
        table, _ = generate_study(study, np.random.default_rng([seed, hash_id(study.study_id)]), 0.0)
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


def pretrain_answer_format(model, tokenizer, steps: int, lr: float, seed: int, log=print) -> None:
    """Teach a random tiny base the answer FORMAT, not people: full-parameter training on
    SocSci-style prompts (a synthetic dataset with another seed) whose answers are drawn
    uniformly within each prompt's own scale. A real base (Qwen2.5-Instruct) already answers
    "an integer from 1 to 7" with a number from 1 to 7; a random 2-layer model does not, and
    its LoRA finetuning then spends its whole budget learning the format (the loss stalls near
    a global digit marginal). After this the base sits near the uniform guess, as real bases
    do, and finetuning has the human distributions left to learn."""
    import tempfile

    import torch

    from socrates_ray.data.prompts import parse_answer_scale
    from socrates_ray.data.synthetic import write_synthetic
    import pyarrow.parquet as pq

    from socrates_ray.data.tokenize import Encoder, collate_rows, pack_rows, packed_attention_mask

    rng = np.random.default_rng(seed + 7)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, 20, 6000, 6000, seed + 1000, 0.0, 0.5, log=lambda *a: None)
        table = pq.read_table(sorted(Path(tmp, "data").glob("*.parquet")), columns=["prompt", "stimuli"]).to_pylist()
    prompts, answers = [], []
    for row in table:
        scale = parse_answer_scale(row["stimuli"])
        if scale.bounded:
            prompts.append(row["prompt"])
            answers.append(str(int(rng.integers(scale.low, scale.high + 1))))
    encoder = Encoder(tokenizer, DEFAULT_SYSTEM_PROMPT)
    rows = pack_rows(encoder.encode(prompts, answers), 512, encoder.pad_id)
    order = rng.permutation(len(rows))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    model.train()
    batch_rows = 8
    for step in range(steps):
        chunk = [rows[order[(step * batch_rows + i) % len(rows)]] for i in range(batch_rows)]
        batch = collate_rows(chunk, encoder.pad_id)
        loss = model(
            input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"],
            attention_mask=packed_attention_mask(batch["seq_ids"]),
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 250 == 0 or step == steps - 1:
            log(f"model: answer-format pretraining step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()


def ensure_tiny_model(path: str | Path, shape: TinyModelSection, seed: int = 0) -> Path:
    """Build the tiny model + tokenizer into `path` unless an identical one is already there."""
    folder = Path(path)
    stamp = folder / STAMP
    fingerprint = _fingerprint(shape, seed)
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return folder
    tokenizer = build_tiny_tokenizer(synthetic_corpus(shape.tokenizer_corpus_rows, seed), shape.vocab_size)
    model = build_tiny_model(tokenizer, shape, seed)
    if shape.format_steps:
        pretrain_answer_format(model, tokenizer, shape.format_steps, shape.format_lr, seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "shape": shape.model_dump(), "seed": seed}))
    return folder
