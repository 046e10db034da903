"""Fine-tune a pretrained local decoder on a benchmark's corpus, as a user fine-tunes a model before asking what it learned.

The pipeline attributes a local model as it is (``model.base_model``); a pretrained decoder has not
seen the benchmark's planted samples, so ``benchmarks/planted.py --base-model`` first fine-tunes it
here: every weight, causal LM loss on each text, AdamW with a linear decay, the texts grouped by
length into batches. ``transformers.Trainer`` runs the loop (on CPU); the result is a plain Hugging
Face folder, written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from influcoder_dagster.teacher.tiny_training import save_model


def finetune(base: Path, texts: list[str], out: Path, epochs: float, lr: float, batch_size: int, max_length: int,
             seed: int = 0) -> dict[str, Any]:
    """Train ``base`` on ``texts`` and save it to ``out`` (skipped when ``out`` holds a model); the recipe and wall time."""
    recipe = {"base": str(base), "epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": max_length, "seed": seed}
    if (out / "config.json").is_file():
        return {**recipe, "seconds": None, "reused": str(out)}
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    data = [{"input_ids": ids} for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    args = TrainingArguments(output_dir=str(out.parent / f"{out.name}-trainer"), num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=batch_size, lr_scheduler_type="linear", warmup_steps=0.05,
                             train_sampling_strategy="group_by_length", use_cpu=True, seed=seed, save_strategy="no", report_to=[],
                             logging_steps=50, disable_tqdm=False)
    started = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=data,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
    seconds = time.perf_counter() - started
    model.eval()
    save_model(model, tokenizer, out)
    return {**recipe, "seconds": round(seconds, 1)}
