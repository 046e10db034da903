"""LogIX (``logix-ai`` 0.1.1) as a per-sample gradient extractor for ``benchmarks/teacher.py``.

LogIX's LoGra, configured as its README does, through a ``logix.LogIX`` run:

* config (a YAML file in a temporary directory, which is also the run's ``root_dir``, so its
  log folder and ``lora/lora_state_dict.pt`` land there): ``lora: {init: random, rank: r}`` with
  ``r = isqrt(dim // n_modules)``, so each module logs ``r x r`` and the total is ``n_modules * r^2``
  (the same split as ours: ``dim`` comes in as our spec's dim, so the dims match exactly);
* ``run.watch(model, name_filter=tracked)`` after ``common.conv1d_to_linear`` (LoGra's LoraLinear only
  wraps ``nn.Linear``), then ``run.add_lora()``: each tracked Linear gets LogIX's encoder ``A``
  (``d_in -> r``), zero bottleneck ``B`` (``r x r``) and decoder ``C`` (``r -> d_out``), ``A`` and
  ``C`` kaiming-uniform (torch seed 0); LogIX re-watches only the ``B``s and freezes every other weight;
* ``run.setup({"grad": ["log"]})`` and per batch ``with run(data_id=ids, mask=attention_mask):``
  around the backward of the SUM of per-sample mean next-token losses (``common.sample_loss``), so
  each sample's ``B`` gradient is the LoGra projection ``C^T (dL/dy) (A x)^T`` of its own gradient;
  ``run.get_log()`` then holds them in memory (``save=False``: nothing is written to disk).

The LoGra sketch is LogIX's (kaiming-uniform ``A``/``C``, not norm-preserving Gaussians as ours),
so per-module scales differ from ours; that is the library's projection, left as is.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import logix
import numpy as np
import torch
import yaml

from benchmarks.peers.common import conv1d_to_linear, sample_loss, tracked_linear_names
from influcoder_dagster.data.tokens import length_sorted_batches, pad_batch


def prepare(model: Any, tokenizer: Any, dim: int, target: str = "weights") -> Callable[[list[Any], int], np.ndarray]:
    """A LogIX run watching the tracked Linears with its LoGra adapters; the returned
    ``extract(encoded, batch_size)`` gives ``(len(encoded), n_modules * r^2)`` float32 per-sample
    gradients of the mean next-token loss."""
    model.eval()
    names = tracked_linear_names(model, target)
    conv1d_to_linear(model)
    rank = max(1, math.isqrt(max(1, dim // len(names))))
    logix.get_logger().setLevel(logging.WARNING)
    tmp = tempfile.TemporaryDirectory(prefix="logix-")  # the run's root_dir, removed with the closure
    config = Path(tmp.name) / "config.yaml"
    config.write_text(yaml.safe_dump({"root_dir": tmp.name, "lora": {"init": "random", "rank": rank}}))
    run = logix.LogIX(project="teacher", config=str(config))
    run.watch(model, name_filter=names)
    torch.manual_seed(0)
    run.add_lora()
    run.setup({"grad": ["log"]})
    keys = [f"{n}.logix_lora_B" for n in names]
    watched = set(run.logger.modules_to_name.values())
    if watched != set(keys):
        raise RuntimeError(f"LogIX watches {sorted(watched ^ set(keys))[:3]}... beyond/short of the tracked modules")
    width = [run.model.get_submodule(k).weight.numel() for k in keys]

    def extract(encoded: list[Any], batch_size: int, _root: Any = tmp) -> np.ndarray:
        out = np.zeros((len(encoded), sum(width)), dtype=np.float32)
        for idx in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
            ids, mask = pad_batch([encoded[i].input_ids for i in idx], tokenizer.pad_token_id)
            with run(data_id=[str(i) for i in idx], mask=mask):
                model.zero_grad(set_to_none=True)
                sample_loss(model, ids, mask).sum().backward()
            _, log = run.get_log()
            out[idx] = torch.cat([log[k]["grad"].reshape(len(idx), -1) for k in keys], dim=1).numpy()
        return out

    return extract
