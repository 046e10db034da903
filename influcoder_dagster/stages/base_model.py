"""The ``base_model`` stage: the decoder to attribute (trained first if ``tiny``), the training states its
teacher scores (``projection.checkpoints``) and the LoRA adapters it attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from influcoder_dagster.core.atomic import dir_size
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.dataset import all_texts, read_dataset
from influcoder_dagster.data.source import data_tag, dataset_files
from influcoder_dagster.data.tokens import tokenize_for_loss
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.teacher.base_model import write_base_model_record
from influcoder_dagster.teacher.decoder import load_decoder, model_dir_hash, resolve_base_model, tiny_model_key
from influcoder_dagster.teacher.logit_fisher import logit_fisher_hash, logit_fisher_sums, write_logit_fisher
from influcoder_dagster.teacher.lora import LoraRecipe, snapshot_folders, warm_up


def checkpoint_count(cfg: Config) -> int:
    """``projection.checkpoints``, or 1 where there is no history to take states from: a local model
    whose full weights the teacher attributes (no warm-up runs)."""
    has_history = cfg.model.base_model == "tiny" or cfg.projection.target == "lora"
    return cfg.projection.checkpoints if has_history else 1


def teacher_recipe(cfg: Config) -> dict[str, Any]:
    """What the base model stage trains for the teacher beside the decoder: its checkpoints and LoRA warm-up."""
    p = cfg.projection
    lora = p.model_dump(include={"lora_rank", "lora_warmup_steps", "lora_lr", "seed"}) if p.target == "lora" else {}
    head = {"logit_fisher": p.logit_fisher} if p.target == "head" else {}
    return {"target": p.target, "checkpoints": checkpoint_count(cfg), **lora, **head}


def base_model_version(cfg: Config) -> str:
    """The base model's identity before it is loaded: a local model's content hash, or the tiny
    decoder's recipe, with the teacher's checkpoints and warm-up. The observable source asset
    reports it; a change re-derives everything."""
    if cfg.model.base_model == "tiny":
        return short_hash(tiny_model_key(cfg.model, data_tag(cfg)), teacher_recipe(cfg))
    return short_hash(model_dir_hash(Path(cfg.model.base_model).expanduser()), teacher_recipe(cfg))


def run_base_model(cfg: Config) -> StageResult:
    """Resolve (or train) the decoder and its checkpoints, warm up their adapters when the teacher
    attributes LoRA, and record them all."""
    paths = Paths(cfg.home_path)
    p = cfg.projection

    def texts() -> list[str]:
        path, _ = dataset_files(cfg)
        return all_texts(read_dataset(path, cfg.dataset))

    info = resolve_base_model(cfg.model, texts, paths.models, data_tag(cfg), checkpoint_count(cfg))
    states = [(path, model_dir_hash(path)) for path in info.epochs] + [(info.path, info.model_hash)]  # each folder hashed once
    checkpoints = [{"path": str(path), "adapter": None, "model_hash": h} for path, h in states]
    if p.target == "lora":
        checkpoints = _warm_adapters(cfg, checkpoints, texts, paths, snapshots=info.kind == "local")
    if p.whitens_head:
        checkpoints = [_with_logit_fisher(cfg, c, texts, paths) for c in checkpoints]
    final = checkpoints[-1]
    record: dict[str, Any] = {"path": str(info.path), "model_hash": final["model_hash"], "kind": info.kind, "n_params": info.n_params,
                              "weights_hash": info.model_hash, "adapter": final["adapter"]}
    if p.whitens_head:
        record["logit_fisher"] = final["logit_fisher"]
    if p.target == "lora":
        record.update(adapter_hash=final["adapter_hash"], lora_rank=p.lora_rank, lora_warmup_steps=p.lora_warmup_steps)
    if len(checkpoints) > 1:  # model_hash then names every state the rows come from
        record.update(checkpoints=checkpoints, model_hash=short_hash([c["model_hash"] for c in checkpoints]))
    write_base_model_record(paths, record)
    return StageResult({**record, "checkpoints": [{k: c[k] for k in ("path", "adapter")} for c in checkpoints],
                        "bytes": dir_size(info.path)}, record["model_hash"])


def _warm_adapters(cfg: Config, checkpoints: list[dict[str, Any]], texts: Any, paths: Paths, snapshots: bool) -> list[dict[str, Any]]:
    """The LoRA adapters the teacher attributes, trained once per (state, recipe) on a sample of the corpus:
    one warm-up per tiny epoch kept, or (``snapshots``, a local model) one warm-up whose earlier steps
    are the checkpoints. Each checkpoint's ``model_hash`` then names the state *with* its adapters."""
    recipe = LoraRecipe.from_config(cfg.projection, cfg.model.max_length, snapshots=snapshots)
    out = []
    for c in checkpoints:
        folder = paths.models / f"lora-{short_hash(c['model_hash'], recipe.__dict__)}"
        if not (folder / "adapter_config.json").is_file():
            model, tokenizer = load_decoder(c["path"])
            warm_up(model, tokenizer, texts(), recipe, folder)
        for adapter in [*snapshot_folders(folder, recipe), folder]:
            adapter_hash = model_dir_hash(adapter)
            out.append({**c, "adapter": str(adapter), "adapter_hash": adapter_hash, "model_hash": short_hash(c["model_hash"], adapter_hash)})
    return out


def _with_logit_fisher(cfg: Config, checkpoint: dict[str, Any], texts: Any, paths: Paths) -> dict[str, Any]:
    """The checkpoint with its logits' Fisher diagonal over the corpus's tokens (``teacher.logit_fisher``),
    computed once per (state, length) on the corpus present then, as the LoRA warm-up is; its hash
    joins the checkpoint's ``model_hash``, so rows whitened by another estimate are never reused."""
    path = paths.models / f"logit-fisher-{short_hash(checkpoint['model_hash'], cfg.model.max_length)}.npz"
    if not path.is_file():
        model, tokenizer = load_decoder(checkpoint["path"])
        samples = tokenize_for_loss(tokenizer, texts(), cfg.model.max_length)
        write_logit_fisher(path, *logit_fisher_sums(model, samples, tokenizer.pad_token_id, cfg.projection.batch_size))
    return {**checkpoint, "logit_fisher": str(path), "model_hash": short_hash(checkpoint["model_hash"], logit_fisher_hash(path))}
