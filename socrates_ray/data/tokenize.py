"""Prompt/answer -> input_ids + labels, packing, and the collate that feeds the model (pure).

A training example is the chat-templated prompt (system + user turn + the assistant header)
followed by the answer tokens and the end-of-turn token. Labels are -100 everywhere except the
answer and end-of-turn, so the loss is only on what the model must predict.

Packing puts several examples into one fixed-length row (first-fit decreasing within a window).
Each token carries the index of its example (`seq_ids`, 0 = padding) and a position that
restarts at 0 per example; `packed_attention_mask` turns seq_ids into a block-diagonal causal
mask so packed examples never attend to each other.

Shared prefixes (`shared_prefix_rows`, ingest.layout shared_prefix): a participant's examples
begin with the same tokens (system prompt, persona, instruction), so a row holds those tokens once
(seq_ids -g, positions 0..p-1) followed by each example's own tokens (seq_ids k > 0, positions
p, p+1, ...), and each example reads the prefix before it and itself, causally. Every example sees
exactly the tokens and positions it would see alone, so its logits are the unshared example's,
for fewer tokens.

A row may also carry values per example beside its tokens (EXAMPLE_COLUMNS), one fixed-width block
per example in the order the examples sit in the row: the persona classes that train.persona_probe
reads back at the answer (`persona_classes`, len(PERSONA_ORDER) per example), and the option token
ids and probabilities of train.anchor_teacher.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from socrates_ray.data.packing import plan_rows
from socrates_ray.data.prompts import PERSONA_ORDER, build_messages

IGNORE_INDEX = -100
_SENTINEL = "\u2063SOCRATES_PROMPT\u2063"


@dataclass
class Encoder:
    """Encodes (prompt, answer) pairs with one tokenizer and system prompt.

    Rendering the chat template is the slow part of tokenization, so the template is rendered
    once around a sentinel and reused as head + prompt + tail; `__post_init__` checks that this
    gives exactly what the template renders, and falls back to per-row rendering if not.
    """

    tokenizer: Any
    system_prompt: str

    def __post_init__(self) -> None:
        render = self._render
        head_tail = render(_SENTINEL).split(_SENTINEL)
        probe = "Probe prompt\n- Age: 30\nOnly return 1 or 2."
        self._fast = len(head_tail) == 2 and head_tail[0] + probe + head_tail[1] == render(probe)
        self._head, self._tail = (head_tail if self._fast else ("", ""))
        # End of turn: the first token the template puts after the assistant's content.
        with_answer = self.tokenizer.apply_chat_template(
            build_messages("p", self.system_prompt, "7"), tokenize=False
        )
        suffix = with_answer[len(render("p")) + len("7") :]
        suffix_ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if not with_answer.startswith(render("p")) or not suffix_ids:
            raise ValueError(
                "tokenizer chat template: the assistant turn must follow the generation prompt and end "
                f"with an end-of-turn token (got suffix {suffix!r}); use a chat model's tokenizer"
            )
        self.eot_ids = suffix_ids[:1]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_ids[0]

    def _render(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            build_messages(prompt, self.system_prompt), tokenize=False, add_generation_prompt=True
        )

    def prefix_text(self, prompt: str) -> str:
        """The model input up to where the answer starts."""
        return self._head + prompt + self._tail if self._fast else self._render(prompt)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer([self.prefix_text(p) for p in prompts], add_special_tokens=False)["input_ids"]

    def encode_answers(self, answers: Sequence[str]) -> list[list[int]]:
        """The token ids of answer texts, as `encode` labels them (before the end-of-turn token)."""
        return self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]

    def encode(self, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) per example: prompt tokens unlabelled, answer + end-of-turn labelled."""
        return labelled(self.encode_prompts(prompts), self.encode_answers(answers), self.eot_ids)

    def portable(self, tokenizer_file: str, probes: Sequence[tuple[str, str]] = ()) -> dict[str, Any] | None:
        """This encoder as plain values for PortableEncoder, which needs only the `tokenizers` library
        (a Ray worker that imports transformers spends ~7 s on it on 2 cores); None where that would not
        encode exactly as this one: a chat template that is not head + prompt + tail, no tokenizer.json,
        or any difference on `probes` (prompt, answer pairs) and a fixed set of awkward strings."""
        from pathlib import Path

        if not self._fast or not Path(tokenizer_file).is_file():
            return None
        values = {"tokenizer_file": str(tokenizer_file), "head": self._head, "tail": self._tail,
                  "eot_ids": list(self.eot_ids), "pad_id": int(self.pad_id)}
        try:
            portable = PortableEncoder(**values)
        except Exception:  # a tokenizer.json the installed `tokenizers` cannot read
            return None
        probes = [*probes, *_PROBES]
        prompts, answers = [p for p, _ in probes], [a for _, a in probes]
        return values if portable.encode(prompts, answers) == self.encode(prompts, answers) else None


_PROBES = [
    ("Survey\n- Age: 30\n- Party: Strong Democrat\n\nHow much do you agree? Only return 1, 2 or 3.", "2"),
    ("  Leading spaces, tabs\tand double  spaces; caf\u00e9 na\u00efve \u2014 \u201cquotes\u201d \u2019s 10,000 3.5% \U0001F600\n\n", "10"),
    ("Literal markup: <|im_end|> <|endoftext|> </s> [INST]", "Strongly agree"),
]


def labelled(prefixes: Sequence[list[int]], answers: Sequence[list[int]], eot_ids: list[int]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example from token ids: the prefix unlabelled, answer + end-of-turn labelled."""
    out = []
    for prefix, answer in zip(prefixes, answers):
        target = list(answer) + list(eot_ids)
        out.append((list(prefix) + target, [IGNORE_INDEX] * len(prefix) + target))
    return out


@dataclass
class PortableEncoder:
    """Encoder.encode on the `tokenizers` library alone, from Encoder.portable()'s values: the chat
    template is already rendered around the prompt (head + prompt + tail), and tokenizer.json holds
    the whole text -> ids pipeline of a fast tokenizer."""

    tokenizer_file: str
    head: str
    tail: str
    eot_ids: list[int]
    pad_id: int

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(self.tokenizer_file)
        self._tokenizer.no_truncation()  # as transformers calls it: a tokenizer.json may carry either
        self._tokenizer.no_padding()

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_answers(self, answers: Sequence[str]) -> list[list[int]]:
        return self._ids(answers)

    def encode(self, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        return labelled(self._ids([self.head + p + self.tail for p in prompts]), self.encode_answers(answers), self.eot_ids)


def persona_classes(demographic: dict[str, Any] | None, buckets: int) -> list[int]:
    """What the persona probe must recover for one participant: each PERSONA_ORDER field's value as
    one of `buckets` classes (crc32 of "field=value"; a hash, so no vocabulary of values is needed
    and an unseen value is just another class), IGNORE_INDEX where the field is empty."""
    demographic = demographic or {}
    out = []
    for key in PERSONA_ORDER:
        value = demographic.get(key)
        empty = value is None or (isinstance(value, str) and not value.strip())
        out.append(IGNORE_INDEX if empty else zlib.crc32(f"{key}={value}".encode()) % buckets)
    return out


# name -> (dtype, the fill past a row's own examples when rows are collated)
EXAMPLE_COLUMNS: dict[str, tuple[Any, float]] = {
    "persona": (np.int32, IGNORE_INDEX),  # train.persona_probe
    "teacher_ids": (np.int32, IGNORE_INDEX),  # train.anchor_teacher
    "teacher_probs": (np.float32, 0.0),
    "teacher_cell": (np.int32, -1),  # the example's cell key (train.anchor_teacher.contrast)
}
Extras = dict[str, Sequence[Sequence[Any]]]  # EXAMPLE_COLUMNS name -> one block per example


def _empty(name: str) -> np.ndarray:
    return np.zeros(0, EXAMPLE_COLUMNS[name][0])


@dataclass
class Row:
    """One training row before collation: one example (padded layouts) or several (packed)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    seq_ids: np.ndarray  # 1..k per example, 0 = padding
    # EXAMPLE_COLUMNS of examples 1..k, each concatenated (empty where the run does not train on it)
    persona: np.ndarray = field(default_factory=lambda: _empty("persona"))
    teacher_ids: np.ndarray = field(default_factory=lambda: _empty("teacher_ids"))
    teacher_probs: np.ndarray = field(default_factory=lambda: _empty("teacher_probs"))
    teacher_cell: np.ndarray = field(default_factory=lambda: _empty("teacher_cell"))

    @property
    def num_tokens(self) -> int:
        return int((self.seq_ids != 0).sum())


def _example_values(extras: Extras | None, members: Sequence[int]) -> dict[str, np.ndarray]:
    """The EXAMPLE_COLUMNS of the examples `members`, each concatenated in that order."""
    return {name: np.concatenate([np.asarray(values[i], EXAMPLE_COLUMNS[name][0]) for i in members])
            for name, values in (extras or {}).items()}


def single_rows(examples: Sequence[tuple[list[int], list[int]]], extras: Extras | None = None) -> list[Row]:
    """One unpadded row per example (the pad layouts pad at collate time); `extras`: EXAMPLE_COLUMNS
    name -> one block per example (persona_classes, ...), or None."""
    rows = []
    for j, (ids, labels) in enumerate(examples):
        n = len(ids)
        rows.append(Row(np.asarray(ids, np.int32), np.asarray(labels, np.int32), np.arange(n, dtype=np.int32), np.ones(n, np.int32),
                        **_example_values(extras, [j])))
    return rows


def pack_rows(examples: Sequence[tuple[list[int], list[int]]], max_length: int, pad_id: int,
              extras: Extras | None = None) -> list[Row]:
    """Several examples per max_length row, as few rows as data.packing.plan_rows finds; `extras`:
    EXAMPLE_COLUMNS name -> one block per example, or None."""
    bins = plan_rows([len(ids) for ids, _ in examples], max_length)
    rows = []
    for members in bins:
        ids = np.full(max_length, pad_id, np.int32)
        labels = np.full(max_length, IGNORE_INDEX, np.int32)
        positions = np.zeros(max_length, np.int32)
        seq = np.zeros(max_length, np.int32)
        at = 0
        for k, i in enumerate(members, start=1):
            ex_ids, ex_labels = examples[i]
            n = len(ex_ids)
            ids[at : at + n] = ex_ids
            labels[at : at + n] = ex_labels
            positions[at : at + n] = np.arange(n)
            seq[at : at + n] = k
            at += n
        rows.append(Row(ids, labels, positions, seq, **_example_values(extras, members)))
    return rows


def prompt_length(labels: Sequence[int]) -> int:
    """The unlabelled tokens an example starts with (its prompt)."""
    n = 0
    for label in labels:
        if label != IGNORE_INDEX:
            break
        n += 1
    return n


def common_prefix(examples: Sequence[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens examples can share: their longest common run of input ids, stopping one
    token before the shortest prompt ends, so every example keeps its own last prompt token (the position
    that predicts its answer) and nothing labelled is shared. 0 for a single example."""
    if len(examples) < 2:
        return 0
    limit = min(prompt_length(labels) for _, labels in examples) - 1
    first = examples[0][0]
    n = 0
    while n < limit and all(ids[n] == first[n] for ids, _ in examples[1:]):
        n += 1
    return n


def runs_of(keys: Sequence[Any]) -> list[list[int]]:
    """Indices of consecutive equal keys, run by run."""
    runs: list[list[int]] = []
    for i, key in enumerate(keys):
        if runs and keys[runs[-1][0]] == key:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def shared_prefix_rows(examples: Sequence[tuple[list[int], list[int]]], keys: Sequence[Any], max_length: int,
                       extras: Extras | None = None) -> list[Row]:
    """Rows in which the consecutive examples of one key (a participant) share their common_prefix:
    the prefix once (seq_ids -g, positions from 0), then each example's remaining tokens (seq_ids k > 0,
    positions continuing after the prefix). A run too long for one row is cut into chunks that each
    repeat the prefix; chunks are then packed into rows of at most max_length tokens (plan_rows), not
    padded (collate pads a batch to its longest row). Within a row, chunks without a prefix come first:
    an example reads the nearest prefix before it, so none may sit after another chunk's prefix."""
    chunks: list[tuple[int, list[int]]] = []  # (prefix length, example indices)
    for run in runs_of(keys):
        p = common_prefix([examples[i] for i in run])
        chunk: list[int] = []
        used = p
        for i in run:
            n = len(examples[i][0]) - p
            if chunk and used + n > max_length:
                chunks.append((p, chunk))
                chunk, used = [], p
            chunk.append(i)
            used += n
        chunks.append((p, chunk))
    lengths = [p + sum(len(examples[i][0]) - p for i in members) for p, members in chunks]
    rows = []
    for members_of_row in plan_rows(lengths, max_length):
        members_of_row = sorted(members_of_row, key=lambda j: (chunks[j][0] > 0, j))
        width = sum(lengths[j] for j in members_of_row)
        ids = np.zeros(width, np.int32)
        labels = np.full(width, IGNORE_INDEX, np.int32)
        positions = np.zeros(width, np.int32)
        seq = np.zeros(width, np.int32)
        at, k, group, order = 0, 0, 0, []
        for j in members_of_row:
            p, members = chunks[j]
            if p:
                group += 1
                ids[at : at + p] = examples[members[0]][0][:p]
                positions[at : at + p] = np.arange(p)
                seq[at : at + p] = -group
                at += p
            for i in members:
                ex_ids, ex_labels = examples[i]
                n = len(ex_ids) - p
                k += 1
                ids[at : at + n] = ex_ids[p:]
                labels[at : at + n] = ex_labels[p:]
                positions[at : at + n] = np.arange(p, p + n)
                seq[at : at + n] = k
                at += n
                order.append(i)
        rows.append(Row(ids, labels, positions, seq, **_example_values(extras, order)))
    return rows


ROW_COLUMNS = ("input_ids", "labels", "position_ids", "seq_ids")


def collate_rows(rows: Sequence[Row], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
    """Row objects (from pack_rows / single_rows) -> the (B, L) tensors of `collate`."""
    return collate({name: [getattr(r, name) for r in rows] for name in (*ROW_COLUMNS, *EXAMPLE_COLUMNS)}, pad_id, pad_to)


def collate(batch: dict[str, Any], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
    """Columns of rows -> (B, L) torch tensors; L = pad_to, else the longest row in the batch. An
    EXAMPLE_COLUMNS column that any row fills becomes (B, the longest row's blocks), its fill past
    each row's own examples."""
    lengths = [len(x) for x in batch["input_ids"]]
    width = pad_to or max(lengths)
    if max(lengths) > width:
        raise ValueError(f"collate: a row of {max(lengths)} tokens exceeds pad_to={width}")
    out = {name: padded(batch[name], width, fill)
           for name, fill in (("input_ids", pad_id), ("labels", IGNORE_INDEX), ("position_ids", 0), ("seq_ids", 0))}
    for name, (dtype, fill) in EXAMPLE_COLUMNS.items():
        values = batch.get(name)
        if values is not None and max(len(x) for x in values) > 0:
            out[name] = padded(values, max(len(x) for x in values), fill, np.float32 if dtype == np.float32 else np.int64)
    return out


def padded(columns: Sequence[Any], width: int, fill: float, dtype: Any = np.int64) -> Any:
    """Variable-length rows -> one (len(columns), width) tensor of `dtype`, `fill` past each row's end."""
    import torch

    arr = np.full((len(columns), width), fill, dtype)
    for r, values in enumerate(columns):
        arr[r, : len(values)] = values
    return torch.from_numpy(arr)


def answer_positions(labels: Any) -> tuple[Any, Any, Any]:
    """(row, position, example index within the row) of each example's answer-predicting position:
    the last prompt token, whose logits score the first answer token. Every example has one run of
    label tokens (answer + end of turn), and packed examples sit in the row in order."""
    import torch

    starts = (labels[:, 1:] != IGNORE_INDEX) & (labels[:, :-1] == IGNORE_INDEX)
    rows, positions = starts.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=labels.shape[0])
    first = torch.cumsum(counts, 0) - counts
    return rows, positions, torch.arange(len(rows), device=labels.device) - first[rows]


def shared_prefix_of(seq_ids: Any) -> Any:
    """(B, L) seq_ids -> (B, L): for each example token, the id (< 0) of the shared prefix it also
    reads, the nearest prefix run before it; 0 for prefix and padding tokens and where no prefix
    precedes (shared_prefix_rows puts prefix-less examples first in a row)."""
    import torch

    positions = torch.arange(seq_ids.shape[1], device=seq_ids.device).expand_as(seq_ids)
    last = torch.where(seq_ids < 0, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    prefix = torch.gather(seq_ids, 1, last.clamp(min=0))
    return torch.where((last >= 0) & (seq_ids > 0), prefix, torch.zeros_like(seq_ids))


def packed_attention_mask(seq_ids: Any, dtype: Any = None) -> Any:
    """(B, L) example indices -> (B, 1, L, L) additive mask: causal within an example, blocked
    across examples and on padding; an example also reads its shared prefix (shared_prefix_of).
    Padding rows attend to themselves only, so no row is all -inf (which would give NaN in softmax)."""
    import torch

    dtype = dtype or torch.float32
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    if bool((seq_ids < 0).any()):
        prefix = shared_prefix_of(seq_ids)[:, :, None]
        same = same | ((prefix != 0) & (prefix == seq_ids[:, None, :]))
    length = seq_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seq_ids.device).tril()
    allowed = same & causal & (seq_ids[:, :, None] != 0)
    return additive_mask(allowed, dtype)


def additive_mask(allowed: Any, dtype: Any) -> Any:
    """(B, L, L) booleans -> (B, 1, L, L) additive mask; every token may always see itself, so
    no row is all -inf (padding rows would otherwise give NaN in softmax)."""
    import torch

    allowed = allowed | torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None, :, :]


def encode_pairs(encoder: Encoder, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> dict[str, list]:
    """DPO pairs -> columns: each side's (input_ids, labels) as `Encoder.encode` makes them (the
    prompt unlabelled, the answer and end-of-turn labelled); each prompt is tokenized once."""
    prefixes = encoder.encode_prompts(prompts)
    answers = encoder.tokenizer(list(chosen) + list(rejected), add_special_tokens=False)["input_ids"]
    sides = {"chosen": labelled(prefixes, answers[: len(chosen)], encoder.eot_ids),
             "rejected": labelled(prefixes, answers[len(chosen):], encoder.eot_ids)}
    out: dict[str, list] = {}
    for side, examples in sides.items():
        out[f"{side}_input_ids"] = [np.asarray(ids, np.int32) for ids, _ in examples]
        out[f"{side}_labels"] = [np.asarray(labels, np.int32) for _, labels in examples]
    return out


def collate_pairs(batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """B pairs -> the (2B, L) tensors of `collate` (rows 0..B-1 the chosen answers, B..2B-1 the
    rejected ones, padded to the longest), plus each pair's reference log-probabilities."""
    import torch

    ids = list(batch["chosen_input_ids"]) + list(batch["rejected_input_ids"])
    columns = {"input_ids": ids, "labels": list(batch["chosen_labels"]) + list(batch["rejected_labels"]),
               "position_ids": [np.arange(len(x)) for x in ids], "seq_ids": [np.ones(len(x), np.int32) for x in ids]}
    out = collate(columns, pad_id)
    for name in ("ref_chosen", "ref_rejected"):
        if name in batch:
            out[name] = torch.as_tensor(np.asarray(batch[name], dtype=np.float64))
    return out
