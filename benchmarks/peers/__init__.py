"""Peer per-sample gradient extractors for ``benchmarks/teacher.py``, one module per library.

Each module has ``prepare(model, tokenizer, dim, target="weights") -> extract``, which builds the
library's projection and hooks (outside any timed region), and ``extract(encoded, batch_size) -> np.ndarray``
returning the ``(len(encoded), ~dim)`` float32 projected gradients of each sample's mean next-token loss
(labels = input ids), w.r.t. the weights of what ``target`` names in ``trackable_modules`` (``weights``:
every Linear/Conv1D but the LM head; ``head``: the LM head alone; no biases), with the library's own
projection at about ``dim`` dimensions. The peers live in ``benchmarks/.peers``
(``pip install --no-deps --target``, see ``install.sh``), never in the project's dependencies.
"""

import sys
from pathlib import Path

PEER_DIR = Path(__file__).resolve().parent.parent / ".peers"
NAMES = ("trak", "logix", "kronfluence", "dattri")


def enable() -> None:
    """Make the peers importable (after the project's own packages, so torch stays ours)."""
    if str(PEER_DIR) not in sys.path:
        sys.path.append(str(PEER_DIR))
