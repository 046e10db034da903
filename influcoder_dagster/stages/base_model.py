"""The ``base_model`` stage: the decoder to attribute (trained first if ``tiny``) and the LoRA adapters its teacher attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from influcoder_dagster.core.atomic import dir_size
from influcoder_dagster.core.config import Config
from influcoder_dagster.core.hashing import short_hash
from influcoder_dagster.core.paths import Paths
from influcoder_dagster.data.dataset import all_texts, read_dataset
from influcoder_dagster.data.source import data_tag, dataset_files
from influcoder_dagster.stages.result import StageResult
from influcoder_dagster.teacher.base_model import write_base_model_record
from influcoder_dagster.teacher.decoder import load_decoder, model_dir_hash, resolve_base_model, tiny_model_key
from influcoder_dagster.teacher.lora import LoraRecipe, warm_up


def base_model_version(cfg: Config) -> str:
    """The base model's identity before it is loaded: a local model's content hash, or the tiny
    decoder's recipe. The observable source asset reports it; a change re-derives everything."""
    if cfg.model.base_model == "tiny":
        return short_hash(tiny_model_key(cfg.model, data_tag(cfg)))
    return model_dir_hash(Path(cfg.model.base_model).expanduser())


def run_base_model(cfg: Config) -> StageResult:
    """Resolve (or train) the decoder, warm up its adapters when the teacher attributes LoRA, and record both."""
    paths = Paths(cfg.home_path)

    def texts() -> list[str]:
        path, _ = dataset_files(cfg)
        return all_texts(read_dataset(path, cfg.dataset))

    info = resolve_base_model(cfg.model, texts, paths.models, data_tag(cfg))
    record: dict[str, Any] = {"path": str(info.path), "model_hash": info.model_hash, "kind": info.kind, "n_params": info.n_params,
                              "weights_hash": info.model_hash, "adapter": None}
    if cfg.projection.target == "lora":
        record.update(_warm_adapters(cfg, info, texts, paths))
    write_base_model_record(paths, record)
    return StageResult({**record, "bytes": dir_size(info.path)}, record["model_hash"])


def _warm_adapters(cfg: Config, info: Any, texts: Any, paths: Paths) -> dict[str, Any]:
    """The LoRA adapters the teacher attributes: trained once per (model, recipe) on a sample of the
    corpus; ``model_hash`` then names the model *with* its adapters, so stores never mix."""
    p = cfg.projection
    recipe = LoraRecipe.from_config(p, cfg.model.max_length)
    folder = paths.models / f"lora-{short_hash(info.model_hash, recipe.__dict__)}"
    if not (folder / "adapter_config.json").is_file():
        model, tokenizer = load_decoder(info.path)
        warm_up(model, tokenizer, texts(), recipe, folder)
    adapter_hash = model_dir_hash(folder)
    return {"adapter": str(folder), "adapter_hash": adapter_hash, "lora_rank": p.lora_rank,
            "lora_warmup_steps": p.lora_warmup_steps, "model_hash": short_hash(info.model_hash, adapter_hash)}
