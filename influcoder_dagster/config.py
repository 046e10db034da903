"""The one configuration model: a TOML file, every option with a default.

Resolution order for the file: an explicit path, then ``INFLUCODER_CONFIG``; for the storage
root: ``INFLUCODER_HOME`` overrides ``home`` in the file, which defaults to ``./influcoder_home``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Section):
    path: str | None = Field(None, description="JSONL/Parquet/CSV file or folder; unset = the demo corpus")
    text_field: str = "text"
    queries_path: str | None = Field(None, description="JSONL of user queries (text, optional prompt)")
    max_chars: int = Field(20_000, description="longer documents are quarantined as over-long")
    min_chars: int = 1


class DemoConfig(_Section):
    corpus: Literal["docstrings", "code"] = Field("docstrings", description="standard-library docstrings, or its functions' source code")
    n_passages: int = Field(1500, description="passages (docstring paragraphs or functions) in the demo corpus")
    n_triggers: int = 4
    planted_per_trigger: int = 8


class ModelConfig(_Section):
    base_model: str = Field("tiny", description="'tiny' or a local Hugging Face causal-LM directory")
    max_length: int = Field(128, description="tokens per sample; longer samples are truncated (recorded)")
    # The tiny decoder, trained on the corpus inside the pipeline.
    vocab_size: int = 2048
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    epochs: int = 8
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0


class ProjectionConfig(_Section):
    kind: Literal["logra", "countsketch"] = "countsketch"
    dim: int = Field(2048, description="target total dimension over all tracked modules")
    seed: int = 0
    normalize_modules: bool = Field(False, description="unit-normalize each module block before concatenation")
    batch_size: int = 16
    out_of_process: bool = Field(False, description="extract each shard in its own process through Dagster Pipes")
    target: Literal["weights", "lora"] = Field("lora", description="gradients of every Linear weight, or of LoRA adapters")
    lora_rank: int = 8
    lora_warmup_steps: int = Field(100, description="AdamW steps that train the adapters before any gradient is taken")
    lora_lr: float = 2e-4
    adam_precondition: bool = Field(True, description="pool gradients as the warm-up's Adam update direction (LESS)")
    adam_momentum: bool = Field(False, description="with adam_precondition, keep the warm-up's first moment in pool rows "
                                "(LESS: m'/sqrt(v')); false (default): g/sqrt(v') only, Adam's diagonal preconditioner "
                                "without the moment every row shares")

    @model_validator(mode="after")
    def _adam_needs_lora_sketch(self) -> ProjectionConfig:
        if self.adam_precondition and (self.target != "lora" or self.kind != "countsketch"):
            raise ValueError("projection.adam_precondition needs target = 'lora' (its optimizer state) and kind = 'countsketch'; "
                             "set projection.adam_precondition = false to use another target or kind")
        return self


class RankingConfig(_Section):
    anchor_fraction: float = Field(0.5, description="share of pool samples used as anchors (chosen by id hash)")
    heldout_fraction: float = Field(0.2, description="share of anchors and of pool samples held out of training")
    top_k: int = 32
    n_bottom: int = 16
    n_random: int = 32
    eval_pool_size: int = Field(400, description="held-out pool samples scored in full for held-out anchors")
    block_rows: int = Field(4096, description="store rows per scoring block (memory ~ block_rows x dim x 10 bytes)")
    anchor_gradients: Literal["stored", "plain"] = Field(
        "stored", description="an anchor's query side: its stored row (the Adam direction under adam_precondition), "
                              "or its plain gradient, as user queries are scored")
    precondition: bool = Field(False, description="score with the damped inverse projected Fisher (influence functions)")
    damping: float = Field(0.1, description="lambda = damping * trace(F) / dim")
    seed: int = 0


class EncoderConfig(_Section):
    base: str | None = Field(None, description="local sentence-transformers path; unset = packaged MiniLM")
    epochs: int = 2
    anchors_per_step: int = 4
    n_top: int = Field(8, description="candidates per anchor per step from the teacher's top-k")
    n_bottom: int = Field(4, description="... from the most negative")
    n_random: int = Field(8, description="... drawn at random from the train pool")
    lr: float = 3e-5
    train_layers: int = Field(4, description="top transformer layers fine-tuned; -1 = all (slow on CPU)")
    max_seq_length: int = 96
    layers: int = Field(3, description="keep only the first N transformer layers of the starting encoder; -1 = all. "
                        "With gradient_sketch, 3 of MiniLM's 6 ranked better and queried ~2x faster")
    asymmetric: bool = Field(False, description="separate query and pool heads on the shared encoder (Router)")
    in_batch: bool = Field(True, description="score every item of a step against every other with the stored gradients")
    tau_teacher: float = 1.0
    tau_student: float = 0.05
    w_listwise: float = 1.0
    w_pairwise: float = 0.5
    w_calibration: float = 0.1
    seed: int = 0
    registered_name: str = "influcoder-encoder"
    objective: Literal["gradient_sketch", "rankings"] = Field(
        "gradient_sketch", description="gradient_sketch: index documents are their gradient rows compressed to sketch_dim, "
        "the encoder learns to predict a text's sketch; rankings: a two-tower student distilled on the teacher's rankings")
    sketch_dim: int = Field(256, description="gradient_sketch: top singular directions of the store kept per document")
    sketch_epochs: int = Field(4, description="gradient_sketch: fine-tuning epochs after the closed-form ridge head (0 = head only)")
    sketch_finetune_max: int = Field(10_000, description="gradient_sketch: training samples fine-tuned on (a random subset "
                                     "beyond that; the ridge head sees all). About 20 s per 1,000 samples per epoch on 2 cores with 3 layers")
    sketch_lr: float = Field(5e-5, description="gradient_sketch: fine-tuning learning rate")


class IndexConfig(_Section):
    kind: Literal["auto", "flat", "ivf_sq8", "hnsw"] = "auto"
    flat_max: int = Field(20_000, description="'auto' uses an exact index up to this many samples, then ivf_sq8")
    nprobe: int = Field(512, ge=1, description="inverted lists searched per encoder query (ivf_sq8). Gradient sketches cluster "
                        "less than text embeddings: on the demo's sketches padded to 100k (1,264 lists, 100 queries), "
                        "256 kept 0.933 of the exact top-10 (0.6 ms a search), 512 kept 0.965 (1.2 ms)")
    rerank_nprobe: int = Field(1024, ge=1, description="inverted lists searched when a re-rank recalls candidates with the "
                               "query's gradient sketch; the backward pass dwarfs the search. Same 100k probe, depth 100: "
                               "512 recovered 0.950 of the gradient path's top-10, 1024 recovered 0.993 (2.6 ms a search)")
    hnsw_m: int = 32
    onnx_query_encoder: bool = Field(True, description="export the index's encoder to ONNX; queries run through "
                                     "ONNX Runtime (same embeddings, about 2x faster for one query on CPU)")


class Config(_Section):
    home: str = "influcoder_home"
    k: int = 10
    dataset: DatasetConfig = DatasetConfig()
    demo: DemoConfig = DemoConfig()
    model: ModelConfig = ModelConfig()
    projection: ProjectionConfig = ProjectionConfig()
    rankings: RankingConfig = RankingConfig()
    encoder: EncoderConfig = EncoderConfig()
    index: IndexConfig = IndexConfig()

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says which file and what to fix."""


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the TOML config (or defaults), then apply ``INFLUCODER_HOME``."""
    path = path or os.environ.get("INFLUCODER_CONFIG")
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass --config PATH or unset INFLUCODER_CONFIG")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
        base = p.resolve().parent
        for section, key in (("dataset", "path"), ("dataset", "queries_path"), ("model", "base_model")):
            value = data.get(section, {}).get(key)
            if value and value != "tiny" and not Path(value).expanduser().is_absolute():
                data[section][key] = str(base / value)
        if "home" in data and not Path(data["home"]).expanduser().is_absolute():
            data["home"] = str(base / data["home"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'defaults'}: {exc}") from exc
    if os.environ.get("INFLUCODER_HOME"):
        config = config.model_copy(update={"home": os.environ["INFLUCODER_HOME"]})
    return config
