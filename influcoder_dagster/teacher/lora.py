"""LoRA adapters for the teacher (the Influcoder paper's and LESS's setting), through ``peft``.

Gradients are taken w.r.t. the adapters of a *warmed-up* model: with a fresh adapter (B = 0) the
gradient w.r.t. A is identically zero, so the adapters are first trained for a few steps on a
sample of the corpus. The warm-up's AdamW state is kept, so pool gradients can be turned into
the Adam update direction (LESS): ``m' / sqrt(v' + eps)`` with ``m' = b1 m + (1 - b1) g`` and
``v' = b2 v + (1 - b2) g^2``.

Layout of an adapter folder: peft's ``adapter_config.json`` + ``adapter_model.safetensors``, and
``adam_state.safetensors`` with ``<module>.exp_avg`` / ``<module>.exp_avg_sq`` per LoRA module
(module names as ``named_modules`` of the adapted model gives them, weights as ``(d_out, d_in)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from influcoder_dagster.core.atomic import atomic_dir
from influcoder_dagster.data.tokens import pad_batch, tokenize_for_loss

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from influcoder_dagster.core.config import ProjectionConfig

ADAM_STATE = "adam_state.safetensors"
BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass(frozen=True)
class LoraRecipe:
    rank: int
    steps: int
    lr: float
    batch_size: int
    max_length: int
    seed: int
    snapshots: tuple[int, ...] = ()  # earlier steps whose adapters (and Adam state) are kept as teacher checkpoints

    @classmethod
    def from_config(cls, projection: ProjectionConfig, max_length: int, snapshots: bool = False) -> LoraRecipe:
        """The configured recipe; with ``snapshots``, ``projection.checkpoints - 1`` earlier steps, evenly spaced."""
        p = projection
        c = p.checkpoints if snapshots else 1
        steps = tuple(sorted({round(p.lora_warmup_steps * i / c) for i in range(1, c)} - {0}))
        return cls(p.lora_rank, p.lora_warmup_steps, p.lora_lr, p.batch_size, max_length, p.seed, steps)


SNAPSHOTS = "snapshots"  # inside an adapter folder: step-<n>/ for each of the recipe's snapshot steps


def snapshot_folders(adapter_dir: Path, recipe: LoraRecipe) -> list[Path]:
    return [adapter_dir / SNAPSHOTS / f"step-{s}" for s in recipe.snapshots]


def is_lora_module(name: str) -> bool:
    return ".lora_A." in f"{name}." or ".lora_B." in f"{name}."


def add_adapters(model: PreTrainedModel, rank: int) -> Any:
    """Wrap every Linear/Conv1D except the output head with a rank-``rank`` LoRA (no dropout: the
    per-sample gradients must be deterministic)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", bias="none")
    return get_peft_model(model, config)


def warm_up(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], recipe: LoraRecipe,
            out_dir: Path, progress: bool = True) -> Path:
    """Train fresh adapters on ``model`` for ``recipe.steps`` AdamW steps on ``texts``; save the
    adapters and the optimizer's moments to ``out_dir`` (atomically), and the same at each of
    ``recipe.snapshots`` under ``out_dir/snapshots/step-<n>``."""
    import torch

    torch.manual_seed(recipe.seed)
    peft_model = add_adapters(model, recipe.rank)
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=recipe.lr, betas=BETAS, eps=EPS, weight_decay=0.0)
    enc = [e.input_ids for e in tokenize_for_loss(tokenizer, texts, recipe.max_length) if len(e.input_ids) >= 2]
    if not enc:
        raise ValueError("no text of at least 2 tokens to warm the LoRA adapters up on")
    gen = torch.Generator().manual_seed(recipe.seed)
    peft_model.train()
    with atomic_dir(out_dir) as tmp, tqdm(total=recipe.steps, desc="LoRA warm-up", disable=not progress) as bar:
        for step in range(1, recipe.steps + 1):
            pick = torch.randint(0, len(enc), (recipe.batch_size,), generator=gen).tolist()
            ids, mask = pad_batch([enc[i] for i in pick], tokenizer.pad_token_id)
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
            if step in recipe.snapshots:
                _save_adapters(peft_model, opt, params, tmp / SNAPSHOTS / f"step-{step}")
        peft_model.eval()
        _save_adapters(peft_model, opt, params, tmp)
    return out_dir


def _save_adapters(peft_model: Any, opt: Any, params: dict[str, Any], folder: Path) -> None:
    """peft's adapter files and the optimizer's moments per LoRA module, as they are now."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, p in params.items():
        module = name.removesuffix(".weight")
        moments = opt.state[p]
        state[f"{module}.exp_avg"] = moments["exp_avg"].contiguous()
        state[f"{module}.exp_avg_sq"] = moments["exp_avg_sq"].contiguous()
    peft_model.save_pretrained(str(folder))
    _canonical_config(folder / "adapter_config.json")
    save_file(state, str(folder / ADAM_STATE))


def _canonical_config(path: Path) -> None:
    """peft writes ``target_modules`` in set order, which differs between processes; sorted, the
    adapters' content hash (part of ``model_hash``, so of every store key) is reproducible."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def load_adapters(model: PreTrainedModel, adapter_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def adam_state(adapter_dir: Path, momentum: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA module name -> (exp_avg, exp_avg_sq) of its weight, from the warm-up.

    Without ``momentum`` exp_avg is zero, so ``adam_direction`` gives ``(1 - b1) g / sqrt(v')``:
    the sample's own gradient under Adam's diagonal preconditioner. With it, nine tenths of every
    row is the shared moment ``b1 m``, which makes the rows' cosines mostly one ranking for all."""
    import torch
    from safetensors.torch import load_file

    flat = load_file(str(adapter_dir / ADAM_STATE))
    modules = {k.rsplit(".", 1)[0] for k in flat}
    first = (lambda t: t) if momentum else torch.zeros_like
    return {m: (first(flat[f"{m}.exp_avg"]), flat[f"{m}.exp_avg_sq"]) for m in modules}


def adam_direction(grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> torch.Tensor:
    """LESS's Adam-preconditioned gradient for a batch of per-sample gradients ``(B, d_out, d_in)``."""
    b1, b2 = BETAS
    m = b1 * exp_avg + (1 - b1) * grad
    v = b2 * exp_avg_sq + (1 - b2) * grad.square()
    return m / (v + EPS).sqrt()
