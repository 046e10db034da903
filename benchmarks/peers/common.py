"""What every peer harness needs: the tracked weights, and GPT-2's Conv1D as nn.Linear."""

from __future__ import annotations

from typing import Any


def tracked_linear_names(model: Any, target: str = "weights") -> list[str]:
    """Names of the modules whose weights every method differentiates (as ``trackable_modules``)."""
    from influcoder_dagster.teacher.gradients import trackable_modules

    return [name for name, _, _ in trackable_modules(model, target)]


def conv1d_to_linear(model: Any) -> Any:
    """Replace each GPT-2 ``Conv1D`` (weight stored in x out) by an equal ``nn.Linear`` in place,
    keeping module names; LoGra in Kronfluence, LogIX and dattri only handles ``nn.Linear``."""
    import torch
    from transformers.pytorch_utils import Conv1D

    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            lin = torch.nn.Linear(mod.weight.shape[0], mod.weight.shape[1], bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.T)
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            setattr(parent, name.rsplit(".", 1)[-1], lin)
    return model


def sample_loss(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Per-sample mean next-token loss of a padded batch (B,), labels = input ids."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    target = input_ids[:, 1:]
    mask = attention_mask[:, 1:].float()
    token = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target) * mask
    return token.sum(1) / mask.sum(1).clamp(min=1)
