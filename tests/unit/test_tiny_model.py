"""The offline tiny base: its tokenizer learns the words of the data it will be finetuned on."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.api import model_path
from socrates_ray.config import load_config
from socrates_ray.models import tiny_model_corpus

SHAPE = ["model.tiny.hidden_size=16", "model.tiny.intermediate_size=32", "model.tiny.num_hidden_layers=1",
         "model.tiny.num_attention_heads=1", "model.tiny.num_key_value_heads=1", "model.tiny.vocab_size=400",
         "model.tiny.tokenizer_corpus_rows=200"]


def tokens_of(folder, word):
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(folder)(f" {word}", add_special_tokens=False)["input_ids"])


def test_the_tokenizer_is_trained_on_the_prepared_training_split_when_there_is_one(tmp_path, capsys):
    prepared = tmp_path / "prepared"
    (prepared / "unseen_studies" / "train").mkdir(parents=True)
    prompts = [f"Persona {i}. Should the city fund the xylophonist quarterly? Only return 1 or 2." for i in range(200)]
    pq.write_table(pa.table({"prompt": prompts, "response": ["1"] * 200}), prepared / "unseen_studies" / "train" / "part-0.parquet")

    def build(folder, data):
        cfg = load_config("configs/demo.yaml", [f"model.path={folder}", f"data.prepared={data}", "train.setting=unseen_studies", *SHAPE])
        return model_path(cfg)

    from_split = build(tmp_path / "tiny_split", prepared)
    assert "200 prompts of" in tiny_model_corpus(from_split) and "trained on 200 prompts" in capsys.readouterr().out
    from_synthetic = build(tmp_path / "tiny_synth", tmp_path / "nothing_prepared")
    assert tiny_model_corpus(from_synthetic) == "synthetic prompts"
    # the user's own word is one token for the split's tokenizer, several for the synthetic one
    assert tokens_of(from_split, "xylophonist") == 1 < tokens_of(from_synthetic, "xylophonist")

    # built once: a later call (serve, evaluate) reuses the folder whatever the data says now
    assert build(tmp_path / "tiny_split", tmp_path / "nothing_prepared") == from_split
    assert "200 prompts of" in tiny_model_corpus(from_split)


def test_a_built_tiny_model_is_never_rebuilt_for_another_shape_or_seed(tmp_path):
    """Rebuilding would leave the adapters trained on it not matching (a test once did this to the
    session's base, under the next tests' adapters): another shape or seed is refused, the folder kept."""
    import pytest

    from socrates_ray.models import TinyModelError

    folder = tmp_path / "tiny"
    cfg = load_config("configs/demo.yaml", [f"model.path={folder}", f"data.prepared={tmp_path / 'none'}", *SHAPE])
    model_path(cfg)
    weights = (folder / "model.safetensors").read_bytes()
    for change in ("model.tiny.tokenizer_corpus_rows=300", "run.seed=1"):
        other = load_config("configs/demo.yaml", [f"model.path={folder}", f"data.prepared={tmp_path / 'none'}", *SHAPE, change])
        with pytest.raises(TinyModelError, match="other settings.*(tokenizer_corpus_rows 200 -> 300|seed 0 -> 1).*delete"):
            model_path(other)
    assert (folder / "model.safetensors").read_bytes() == weights
