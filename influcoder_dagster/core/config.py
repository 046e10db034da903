"""The one configuration model: a TOML file, every option with a default.

Resolution order for the file: an explicit path, then ``INFLUCODER_CONFIG``; for the storage
root: ``INFLUCODER_HOME`` overrides ``home`` in the file, which defaults to ``./influcoder_home``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from influcoder_dagster.core.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Section):
    path: str | None = Field(None, description="JSONL/Parquet/CSV file or folder; unset = the demo corpus")
    text_field: str = Field("text", description="JSONL/Parquet field or CSV column that holds each sample's text")
    queries_path: str | None = Field(None, description="JSONL of user queries (text, optional prompt)")
    max_chars: int = Field(20_000, ge=1, description="longer documents are quarantined as over-long")
    min_chars: int = Field(1, ge=1, description="documents shorter than this (whitespace stripped) are quarantined as empty")
    shard_rows: int = Field(10_000, ge=1, description="a file of more records is cut into shards (partitions) of this many: "
                            "appended rows become new shards, a changed row rebuilds only its shard")


class DemoConfig(_Section):
    corpus: Literal["docstrings", "code"] = Field("docstrings", description="standard-library docstrings, or its functions' source code")
    n_passages: int = Field(1500, ge=1, description="passages (docstring paragraphs or functions) in the demo corpus")
    n_triggers: int = Field(4, ge=0, le=6, description="planted groups: rare trigger phrases with a known continuation, one probe query each (at most 6)")
    planted_per_trigger: int = Field(8, ge=1, description="planted samples per trigger: the answers its probe query should be attributed to")


class ModelConfig(_Section):
    base_model: str = Field("tiny", description="'tiny' or a local Hugging Face causal-LM directory")
    max_length: int = Field(128, ge=2, description="tokens per sample; longer samples are truncated (recorded)")
    # The tiny decoder, trained on the corpus inside the pipeline.
    vocab_size: int = Field(2048, ge=64, description="tiny decoder: byte-level BPE vocabulary size, trained on the corpus")
    n_layer: int = Field(2, ge=1, description="tiny decoder: GPT-2 transformer layers")
    n_embd: int = Field(128, ge=8, description="tiny decoder: hidden size")
    n_head: int = Field(4, ge=1, description="tiny decoder: attention heads")
    epochs: int = Field(8, ge=0, description="tiny decoder: training epochs over the corpus")
    batch_size: int = Field(16, ge=1, description="tiny decoder: training batch size")
    lr: float = Field(3e-3, gt=0, description="tiny decoder: peak AdamW learning rate (one-cycle schedule)")
    seed: int = Field(0, ge=0, description="tiny decoder: seed of its initialisation and batch order")


class ProjectionConfig(_Section):
    kind: Literal["logra", "countsketch"] = Field(
        "countsketch", description="countsketch: hash every coordinate of each module's per-sample gradient into a signed bucket "
        "(above 4M coordinates, a pretrained decoder's output head, with a factored hash, the TensorSketch, that never forms the gradient); "
        "logra: project the gradient's two factors (input and output gradient), never forming it (for large weights)")
    dim: int = Field(2048, ge=1, description="target total dimension over all tracked modules")
    seed: int = Field(0, ge=0, description="seed of the random projection (and of the LoRA warm-up)")
    normalize_modules: bool = Field(False, description="unit-normalize each module block before concatenation")
    batch_size: int = Field(16, ge=1, description="samples per batch when extracting gradients (store rows and queries) and in the LoRA warm-up")
    out_of_process: bool = Field(False, description="extract each shard in its own process through Dagster Pipes")
    target: Literal["weights", "lora", "head"] = Field(
        "head", description="gradients of the output head alone (one forward pass and the logits' gradient per sample; "
        "with logit_fisher, the teacher that predicted retraining best on the LDS benchmark and found the planted samples, "
        "docs/results.md), of LoRA adapters, or of every Linear weight but the output head")
    logit_fisher: bool = Field(True, description="target = 'head' (ignored for the others): whiten every row's vocabulary rows by the inverse square "
                               "root of the logits' Fisher diagonal over the corpus's tokens (influence with a diagonal K-FAC "
                               "output factor), estimated once per checkpoint by the base_model stage")
    lora_rank: int = Field(8, ge=1, description="rank of the LoRA adapters on every Linear/Conv1D but the output head (target = 'lora')")
    lora_warmup_steps: int = Field(100, ge=0, description="AdamW steps that train the adapters before any gradient is taken")
    lora_lr: float = Field(2e-4, gt=0, description="AdamW learning rate of the LoRA warm-up")
    adam_precondition: bool = Field(False, description="pool gradients as the warm-up's Adam update direction (LESS); "
                                    "needs target = 'lora' and kind = 'countsketch'")
    adam_momentum: bool = Field(False, description="with adam_precondition, keep the warm-up's first moment in pool rows "
                                "(LESS: m'/sqrt(v')); false (default): g/sqrt(v') only, Adam's diagonal preconditioner "
                                "without the moment every row shares")
    checkpoints: int = Field(3, ge=1, le=16, description="training states whose gradients make a store row (each dim wide), their "
                             "cosines averaged as in LESS: the tiny decoder's epochs, geometrically spaced (8 epochs, 3 "
                             "checkpoints: 2, 4, 8), each with its own LoRA warm-up; for a local model, evenly spaced steps "
                             "of the LoRA warm-up (a local model with target = 'weights' or 'head' has one state). Store size and "
                             "extraction time grow with it")
    head_factors: Literal["auto", "on", "off"] = Field(
        "auto", description="target = 'head': beside each shard's sketch, keep each loss token's largest logit-gradient entries and "
        "its head input in a low-rank basis (<shard>.head.safetensors), which attribute/audit --rerank N --factors score "
        "without a forward pass per candidate; auto: where the head is hashed factored (a pretrained vocabulary, whose sketch "
        "keeps a small share of the exact top-10)")
    head_factors_top_k: int = Field(8, ge=1, description="logit-gradient entries kept per loss token in the head factors")
    head_factors_rank: int = Field(32, ge=1, description="rank of a shard's basis for the head inputs in the head factors")

    @model_validator(mode="after")
    def _factors_need_the_head(self) -> ProjectionConfig:
        if self.head_factors == "on" and self.target != "head":
            raise ValueError("projection.head_factors = 'on' keeps the output head's token factors: it needs target = 'head'")
        return self

    @model_validator(mode="after")
    def _adam_needs_lora_sketch(self) -> ProjectionConfig:
        if self.adam_precondition and (self.target != "lora" or self.kind != "countsketch"):
            raise ValueError("projection.adam_precondition needs target = 'lora' (its optimizer state) and kind = 'countsketch'; "
                             "set projection.adam_precondition = false to use another target or kind")
        return self

    @property
    def whitens_head(self) -> bool:
        """Whether rows are whitened by the logits' Fisher diagonal (``logit_fisher`` applies to the head target only)."""
        return self.logit_fisher and self.target == "head"


class RankingConfig(_Section):
    anchor_fraction: float = Field(0.5, ge=0, le=1, description="share of pool samples used as anchors (chosen by id hash)")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="share of anchors and of pool samples held out of training")
    top_k: int = Field(32, ge=1, description="highest-scored samples kept per query (at least k)")
    n_bottom: int = Field(16, ge=0, description="most negatively scored samples kept per query")
    n_random: int = Field(32, ge=0, description="random candidates scored per anchor (from the train pool for training anchors)")
    eval_pool_size: int = Field(400, ge=0, description="held-out pool samples scored in full for held-out anchors")
    block_rows: int = Field(4096, ge=1, description="store rows per scoring block, and queries per pass over the store (memory ~ block_rows x (10 dim + 16 block_rows) bytes)")
    anchor_gradients: Literal["stored", "plain"] = Field(
        "stored", description="an anchor's query side: its stored row (the Adam direction under adam_precondition), "
                              "or its plain gradient, as user queries are scored")
    precondition: bool = Field(False, description="score with the damped inverse projected Fisher (influence functions)")
    damping: float = Field(0.1, gt=0, description="lambda = damping * trace(F) / dim")
    seed: int = Field(0, ge=0, description="seed of the anchor choice, the held-out evaluation pool and the random candidates")


class EncoderConfig(_Section):
    base: str | None = Field(None, description="local sentence-transformers path; unset = packaged MiniLM")
    epochs: int = Field(2, ge=0, description="rankings objective: training epochs over the anchors")
    anchors_per_step: int = Field(4, ge=1, description="rankings objective: anchors per optimizer step")
    n_top: int = Field(8, ge=0, description="rankings objective: candidates per anchor per step from the teacher's top-k")
    n_bottom: int = Field(4, ge=0, description="rankings objective: candidates per anchor per step from the teacher's most negative")
    n_random: int = Field(8, ge=0, description="rankings objective: candidates per anchor per step drawn at random from the train pool")
    lr: float = Field(3e-5, gt=0, description="rankings objective: AdamW learning rate")
    train_layers: int = Field(4, ge=-1, description="sentence encoder: top transformer layers fine-tuned; -1 = all (slow on CPU)")
    max_seq_length: int = Field(96, ge=2, description="sentence encoder: tokens per text it reads; longer texts are truncated "
                                "(the decoder-token bag truncates at model.max_length, as the teacher does)")
    layers: int = Field(3, ge=-1, description="sentence encoder (the student with query_features = "
                        "'sentence_encoder' or the rankings objective, and the untrained baseline): keep only its first N "
                        "transformer layers; -1 = all. With gradient_sketch, 3 of MiniLM's 6 ranked better and queried ~2x faster")
    asymmetric: bool = Field(False, description="separate query and pool heads on the shared encoder (Router)")
    in_batch: bool = Field(True, description="rankings objective: score every item of a step against every other with the stored gradients")
    tau_teacher: float = Field(1.0, gt=0, description="rankings objective: temperature of the teacher scores in the listwise loss")
    tau_student: float = Field(0.05, gt=0, description="rankings objective: temperature of the student similarities (listwise and pairwise losses)")
    w_listwise: float = Field(1.0, ge=0, description="rankings objective: weight of the listwise KL loss")
    w_pairwise: float = Field(0.5, ge=0, description="rankings objective: weight of the teacher-gap-weighted RankNet loss")
    w_calibration: float = Field(0.1, ge=0, description="rankings objective: weight of the MSE between z-scored student and teacher scores")
    seed: int = Field(0, ge=0, description="seed of the training order and samples (candidates, sketch fit rows, fine-tuning subset)")
    registered_name: str = Field("influcoder-encoder", description="MLflow registered-model name the encoder is logged and promoted under")
    objective: Literal["gradient_sketch", "rankings"] = Field(
        "gradient_sketch", description="gradient_sketch: index documents are their gradient rows compressed to sketch_dim, "
        "the encoder learns to predict a text's sketch; rankings: a two-tower student distilled on the teacher's rankings")
    query_features: Literal["auto", "decoder_tokens", "decoder_output_gradient", "sentence_encoder"] = Field(
        "auto", description="gradient_sketch: what the query head reads. decoder_tokens: the decoder's own tokens, "
        "idf-weighted and averaged (a sentence-transformers StaticEmbedding: a query is a table lookup); "
        "decoder_output_gradient: those tokens plus the gradient of the text's loss on a map at the decoder's output, at "
        "every checkpoint the teacher scores, from one decoder forward pass per checkpoint per query (no backward); "
        "sentence_encoder: the sentence-transformers model at encoder.base. auto: decoder_output_gradient for the tiny "
        "decoder (its forward passes cost milliseconds), "
        "decoder_tokens for a model.base_model folder (a pretrained decoder's forward pass would cost much of the gradient "
        "path's time). See docs/results.md, 'What the query head should read'")
    sketch_dim: int = Field(1024, ge=1, description="gradient_sketch: top singular directions of the store kept per document. "
                            "On 20,000 real passages 1,024 kept 0.81 of the full rows' top-10 (256: 0.47) and the "
                            "re-rank at depth 100 0.998 (256: 0.88); the index holds 4 KB per sample flat, 1 KB with ivf_sq8")
    sketch_epochs: int = Field(4, ge=0, description="gradient_sketch with a sentence_encoder: fine-tuning epochs after the closed-form "
                               "ridge head (0 = head only). The decoder-token bag is linear, so ridge already is its least-squares "
                               "fit: fine-tuning it on two real corpora moved held-back cosine by under 0.001, or lowered it")
    sketch_finetune_max: int = Field(10_000, ge=1, description="gradient_sketch with a sentence_encoder: training samples fine-tuned "
                                     "on (a random subset beyond that; the ridge head sees all). About 20 s per 1,000 samples per "
                                     "epoch on 2 cores with 3 layers")
    sketch_lr: float = Field(5e-5, gt=0, description="gradient_sketch with a sentence_encoder: fine-tuning learning rate")

    @model_validator(mode="after")
    def _no_empty_encoder(self) -> EncoderConfig:
        if self.layers == 0:
            raise ValueError("encoder.layers = 0 keeps no layer; use -1 for all, or 1 or more")
        return self

    @property
    def reads_decoder_tokens(self) -> bool:
        """Whether the student reads the decoder's tokens (the token bag, alone or beside the output
        gradient): a linear head that ridge fits exactly. ``query_features`` applies to ``gradient_sketch`` only."""
        return self.objective == "gradient_sketch" and self.query_features != "sentence_encoder"


class IndexConfig(_Section):
    kind: Literal["auto", "flat", "ivf_sq8", "hnsw"] = Field(
        "auto", description="flat: exact; ivf_sq8: inverted lists over 8-bit quantized vectors; hnsw: a graph; "
        "auto: flat up to flat_max samples, then ivf_sq8")
    flat_max: int = Field(20_000, ge=0, description="'auto' uses an exact index up to this many samples, then ivf_sq8")
    nprobe: int = Field(512, ge=1, description="inverted lists searched per encoder query (ivf_sq8). Gradient sketches cluster "
                        "less than text embeddings: on the demo's sketches padded to 100k (1,264 lists, 100 queries), "
                        "256 kept 0.933 of the exact top-10 (0.6 ms a search), 512 kept 0.965 (1.2 ms)")
    rerank_nprobe: int = Field(1024, ge=1, description="inverted lists searched when a re-rank recalls candidates with the "
                               "query's gradient sketch; the backward pass dwarfs the search. Same 100k probe, depth 100: "
                               "512 recovered 0.950 of the gradient path's top-10, 1024 recovered 0.993 (2.6 ms a search)")
    hnsw_m: int = Field(32, ge=2, description="hnsw: neighbours per graph node (HNSW's M)")
    onnx_query_encoder: bool = Field(True, description="export the index's transformer encoder to ONNX; queries run "
                                     "through ONNX Runtime (same embeddings, about 2x faster for one query on CPU). "
                                     "A decoder-token bag is a table lookup and is not exported")


class ComputeConfig(_Section):
    backend: Literal["local", "ray"] = Field(
        "local", description="where per-shard work (gradient extraction, shard embeddings) runs: in the Dagster run's "
        "process, or as a Ray task on a cluster whose workers mount the storage root at the same path")
    ray_address: str | None = Field(None, description="backend = 'ray': the cluster to join ('auto', 'ray://host:10001' or "
                                    "host:port); unset starts a local Ray cluster inside the run's process")
    ray_cpus_per_task: int = Field(1, ge=1, description="backend = 'ray': CPUs a shard task reserves")


class Config(_Section):
    home: str = Field("influcoder_home", description="storage root of every artifact; relative to the config file; "
                      "INFLUCODER_HOME overrides it")
    k: int = Field(10, ge=1, description="results per query in the demo and the planted-recall@k metrics; "
                   "rankings keep at least k top samples per query")
    dataset: DatasetConfig = DatasetConfig()
    demo: DemoConfig = DemoConfig()
    model: ModelConfig = ModelConfig()
    projection: ProjectionConfig = ProjectionConfig()
    rankings: RankingConfig = RankingConfig()
    encoder: EncoderConfig = EncoderConfig()
    index: IndexConfig = IndexConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _resolve_query_features(self) -> Config:
        """``encoder.query_features = 'auto'`` becomes what it stands for with this ``model.base_model``,
        so the encoder's settings, provenance and staleness name the features it actually reads."""
        if self.encoder.query_features == "auto":
            chosen = "decoder_output_gradient" if self.model.base_model == "tiny" else "decoder_tokens"
            self.encoder = self.encoder.model_copy(update={"query_features": chosen})
        return self

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()




def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the TOML config (or defaults), then apply ``INFLUCODER_HOME``. Every error names the file."""
    path = path or os.environ.get("INFLUCODER_CONFIG")
    data: dict = {}
    if path:
        p = Path(path)
        data = _read_toml(p)
        _resolve_paths(data, p.resolve().parent, p)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'defaults'}: {_describe(exc)}") from exc
    if os.environ.get("INFLUCODER_HOME"):
        config = config.model_copy(update={"home": os.environ["INFLUCODER_HOME"]})
    return config


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line each: ``section.key: what is wrong (got value)``."""
    lines = []
    for e in exc.errors():
        where = ".".join(str(part) for part in e["loc"])
        got = "" if isinstance(e["input"], dict) else f" (got {e['input']!r})"
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(lines)


def _read_toml(p: Path) -> dict:
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass --config PATH or unset INFLUCODER_CONFIG")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc


def _resolve_paths(data: dict, base: Path, p: Path) -> None:
    """Paths in the file are relative to the file; sections and paths must have the right type first."""
    for section in Config.model_fields.keys() - {"home", "k"}:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{p}: '{section}' must be a table ([{section}] with keys under it), not {type(data[section]).__name__}")
    for section, key in (("dataset", "path"), ("dataset", "queries_path"), ("model", "base_model")):
        value = data.get(section, {}).get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{p}: {section}.{key} must be a string path, not {type(value).__name__}")
        if value and value != "tiny" and not Path(value).expanduser().is_absolute():
            data[section][key] = str(base / value)
    if "home" in data:
        if not isinstance(data["home"], str):
            raise ConfigError(f"{p}: home must be a string path, not {type(data['home']).__name__}")
        if not Path(data["home"]).expanduser().is_absolute():
            data["home"] = str(base / data["home"])
