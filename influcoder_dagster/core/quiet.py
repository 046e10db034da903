"""Known, harmless library noise, silenced once by the CLI (``quiet_libraries``); imports none of those libraries."""

from __future__ import annotations

import logging
import os
import warnings

# Read by the libraries when they are first imported: the CLI sets them before that, a value already set wins.
ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' per-load "Loading weights" / "Writing model shards" bars
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # mlflow's "Downloading artifacts" bar for local files
}
# (message regex matched at the start, category): deprecations inside the libraries, nothing our code can change.
WARNINGS = [
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),  # transformers, called by peft
    (r"fan_in_fan_out is set to False but the target module is `Conv1D`", UserWarning),  # peft on GPT-2: it sets it right
]
# logger name -> messages (start) to drop; logging filters, not levels, so the libraries' real warnings still show.
LOG_MESSAGES = {
    # The tiny GPT-2 config has no loss_type; transformers uses the causal-LM loss, which is the right one.
    "transformers.modeling_utils": ("`loss_type=None` was set in the config but it is unrecognized",),
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
    "mlflow.sentence_transformers": ("'models:/",),  # "'models:/...@champion' resolved as 'file://...'"
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_libraries() -> None:
    """Silence the noise above in this process (and the env part in processes it starts). Call once, early."""
    for name, value in ENV.items():
        os.environ.setdefault(name, value)
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
