"""The persona probe (train.persona_probe): a training-only reward for reading the person.

In SocSci-style data a persona field rarely moves answers on its own; it moves them together with
the stimulus (a party cue moves the two parties apart, a topic moves one age group). The answer
loss then gives a base model no first-order reason to bring the persona lines to the position that
predicts the answer, and a small base never learns the interaction. The probe gives it that
reason: a linear layer must recover every persona field's value (data.tokenize.persona_classes)
from what one layer's MLP reads at that position, so attention learns to carry the persona there
and the MLP can combine it with the stimulus. Its weight falls to 0 over the first part of the run
(`until`), which then fits the answers alone.

The probe's layer is a submodule of the model (`persona_probe`), so DeepSpeed trains, partitions
and checkpoints it with the rest; the exported model or adapter never contains it
(checkpoint.export_model).
"""

from __future__ import annotations

from typing import Any

from socrates_ray.data.prompts import PERSONA_ORDER
from socrates_ray.data.tokenize import IGNORE_INDEX, answer_positions
from socrates_ray.errors import SocratesError

ATTRIBUTE = "persona_probe"  # the probe's name on the model (and its state_dict prefix)


class PersonaProbeError(SocratesError, ValueError):
    """The model has no layer the probe can read."""


class PersonaProbe:
    """Attach with `PersonaProbe(model, ...)` before deepspeed.initialize; after each forward of the
    model, `loss(batch)` is the probe's cross-entropy over the batch's persona fields and
    `weight_at(step)` what the loop multiplies it by."""

    def __init__(self, model: Any, weight: float, until: float, layer: int, buckets: int, total_steps: int) -> None:
        import torch

        layers = model.config.num_hidden_layers
        if not -layers <= layer < layers:
            raise PersonaProbeError(f"train.persona_probe.layer={layer}: the model has {layers} layers; use 0..{layers - 1} "
                                    "or a negative index from the last")
        index = layer % layers
        suffix = f"layers.{index}.mlp"
        mlp = next((m for name, m in model.named_modules() if name.endswith(suffix)), None)
        if mlp is None:
            raise PersonaProbeError(f"train.persona_probe: no module named *.{suffix} in {type(model).__name__}; the probe "
                                    "reads a decoder layer's MLP input (Llama/Qwen/Mistral-style models); set "
                                    "train.persona_probe.weight=0 for this model")
        self.weight, self.buckets, self.fields = weight, buckets, len(PERSONA_ORDER)
        self.until_step = max(1.0, until * total_steps)
        self.linear = torch.nn.Linear(model.config.hidden_size, self.fields * buckets)
        setattr(model, ATTRIBUTE, self.linear)  # a submodule: trained, partitioned and checkpointed with the model
        self._seen: Any = None
        mlp.register_forward_pre_hook(self._keep)

    def _keep(self, module: Any, inputs: tuple[Any, ...]) -> None:
        self._seen = inputs[0]

    def weight_at(self, step: int) -> float:
        """The probe loss's multiplier at optimizer step `step` (0-based): linear from `weight` to 0."""
        return self.weight * max(0.0, 1.0 - step / self.until_step)

    def loss(self, batch: dict[str, Any]) -> Any:
        """Mean cross-entropy of the persona classes at each example's answer-predicting position, from
        the hidden states the model's last forward passed to the probed MLP."""
        import torch.nn.functional as F

        hidden, self._seen = self._seen, None
        if hidden is None or "persona" not in batch:
            raise PersonaProbeError("persona probe: no forward pass or no persona classes in the batch (the rows were "
                                    "tokenized without train.persona_probe)")
        labels = batch["labels"].to(hidden.device)
        rows, positions, example = answer_positions(labels)
        targets = batch["persona"].to(hidden.device).view(labels.shape[0], -1, self.fields)[rows, example]
        logits = self.linear(hidden[rows, positions]).float().view(-1, self.buckets)
        targets = targets.reshape(-1)
        if not bool((targets != IGNORE_INDEX).any()):  # no persona field in the batch: nothing to recover
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
