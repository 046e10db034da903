"""Training the ``tiny`` decoder, resumable.

At 100,000 samples the tiny decoder's eight epochs take hours on a laptop's CPU. The run saves its
whole state (weights, tokenizer, AdamW moments, one-cycle schedule, both random generators and its
place in the epoch) beside the model folder every few minutes and at each epoch's end; a run of the
same recipe on the same texts continues from it, step for step as if never stopped. Hand-written
because the transformers ``Trainer``, which resumes, would replace this loop's length-sorted batches
and saves its optimizer with pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from influcoder_dagster.core.atomic import atomic_dir
from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch, tokenize_for_loss

if TYPE_CHECKING:
    from influcoder_dagster.core.config import ModelConfig

log = logging.getLogger(__name__)
SAVE_EVERY_S = 300.0  # wall time between two saved training states (and one at every epoch's end)


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """A Hugging Face model folder (safetensors + tokenizer), written atomically."""
    with atomic_dir(out_dir) as tmp:
        _write_model(model, tokenizer, tmp)
    return out_dir


def _write_model(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def training_folder(out_dir: Path) -> Path:
    """Where an unfinished run keeps its state, beside the model folder it will write."""
    return out_dir.parent / f"{out_dir.name}.training"


def epochs_folder(out_dir: Path) -> Path:
    """Where the tiny decoder's earlier epochs are kept, beside it (its own folder's hash stays its weights')."""
    return out_dir.parent / f"{out_dir.name}.epochs"


class TinyDecoderTraining:
    """One run of the tiny decoder's training on ``texts``: :meth:`steps` trains, saving its state
    as it goes, and :meth:`finish` writes the model. A saved state of the same run is picked up."""

    def __init__(self, texts: list[str], cfg: ModelConfig, out_dir: Path, make_tokenizer: Callable[[list[str]], Any],
                 keep_epochs: Sequence[int] = ()) -> None:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

        self.cfg, self.out_dir, self.keep_epochs = cfg, out_dir, tuple(keep_epochs)
        self.fingerprint = _fingerprint(texts, cfg)
        saved, folder = self._saved_state(), training_folder(out_dir)
        torch.manual_seed(cfg.seed)
        if saved:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
            self.model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager")
        else:
            self.tokenizer = make_tokenizer(texts)
            self.model = GPT2LMHeadModel(GPT2Config(
                vocab_size=len(self.tokenizer), n_positions=cfg.max_length, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id, attn_implementation="eager"))
        self.encoded = [e.input_ids for e in tokenize_for_loss(self.tokenizer, texts, cfg.max_length)]
        self.batches = list(length_sorted_batches([len(e) for e in self.encoded], cfg.batch_size))
        self.total = cfg.epochs * len(self.batches)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=max(self.total, 1), pct_start=0.1)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.done_in_epoch, self.epoch_gen_state = 1, 0, self.gen.get_state()
        self.loss = float("nan")
        if saved:
            self._restore(saved)

    @property
    def step(self) -> int:
        return (self.epoch - 1) * len(self.batches) + self.done_in_epoch

    def steps(self) -> Iterator[int]:
        """Train to the end, yielding the step number after each optimizer step."""
        import torch

        last_save = time.monotonic()
        while self.epoch <= self.cfg.epochs:
            self.gen.set_state(self.epoch_gen_state)
            order = torch.randperm(len(self.batches), generator=self.gen).tolist()
            self.model.train()
            for b in order[self.done_in_epoch:]:
                self._train_on(self.batches[b])
                self.done_in_epoch += 1
                yield self.step
                if time.monotonic() - last_save > SAVE_EVERY_S:
                    self.save_state()
                    last_save = time.monotonic()
            self._end_epoch()
            if self.epoch <= self.cfg.epochs:
                self.save_state()
                last_save = time.monotonic()

    def _train_on(self, batch: list[int]) -> None:
        import torch

        ids, mask = pad_batch([self.encoded[i] for i in batch], self.tokenizer.pad_token_id)
        loss = self.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        self.loss = loss.item()

    def _end_epoch(self) -> None:
        if self.epoch in self.keep_epochs and self.epoch < self.cfg.epochs:
            self.model.eval()
            save_model(self.model, self.tokenizer, epochs_folder(self.out_dir) / f"epoch-{self.epoch}")
        self.epoch, self.done_in_epoch, self.epoch_gen_state = self.epoch + 1, 0, self.gen.get_state()

    def finish(self) -> Path:
        """Write the trained model folder and drop the saved state."""
        import shutil

        self.model.eval()
        save_model(self.model, self.tokenizer, self.out_dir)
        shutil.rmtree(training_folder(self.out_dir), ignore_errors=True)
        return self.out_dir

    def save_state(self) -> None:
        """Everything a later run needs to continue from here, written atomically."""
        import torch
        from safetensors.torch import save_file

        opt = self.opt.state_dict()
        tensors = {f"{i}.{k}": v.contiguous() for i, st in opt["state"].items() for k, v in st.items()}
        tensors |= {"rng.torch": torch.get_rng_state(), "rng.epoch": self.epoch_gen_state}
        state = {"fingerprint": self.fingerprint, "epoch": self.epoch, "done_in_epoch": self.done_in_epoch,
                 "param_groups": opt["param_groups"], "scheduler": self.sched.state_dict()}
        with atomic_dir(training_folder(self.out_dir)) as tmp:
            _write_model(self.model, self.tokenizer, tmp)
            save_file(tensors, tmp / "optimizer.safetensors")
            (tmp / "state.json").write_text(json.dumps(state))

    def _saved_state(self) -> dict[str, Any] | None:
        path = training_folder(self.out_dir) / "state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was saved by another recipe or corpus; training from the start", path.parent)
            return None
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        import torch
        from safetensors.torch import load_file

        folder = training_folder(self.out_dir)
        tensors = load_file(folder / "optimizer.safetensors")
        moments: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if not key.startswith("rng."):
                i, name = key.split(".", 1)
                moments.setdefault(int(i), {})[name] = value
        self.opt.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.epoch, self.done_in_epoch, self.epoch_gen_state = state["epoch"], state["done_in_epoch"], tensors["rng.epoch"]
        log.info("tiny decoder: continuing from step %d of %d (%s)", self.step, self.total, folder)


def _fingerprint(texts: list[str], cfg: ModelConfig) -> str:
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]
