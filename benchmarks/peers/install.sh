#!/usr/bin/env bash
# The peers for benchmarks/teacher.py, into benchmarks/.peers (not the project's environment).
# --no-deps everywhere: their declared dependencies would replace our CPU torch with a CUDA build;
# they run on the project's torch and transformers. logix-ai declares Python < 3.11 but runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-../.venv/bin/pip}"
$PIP install -q --no-deps --target .peers traker dattri kronfluence==1.0.1
$PIP install -q --no-deps --ignore-requires-python --target .peers logix-ai
$PIP install -q --no-deps --target .peers einops einconv opt_einsum  # kronfluence and logix need these
