#!/usr/bin/env bash
# One GPU vs two, the same recipe under `accelerate launch` (data parallel; no code of ours for the
# distribution), at the same effective batch: the seeds' 2 x 4 on one GPU, 2 x 2 on each of two.
#   bash bench/multi_gpu.sh [model-key] [steps]     # model keys as in `python -m bench`: qwen-1.5b, llama-8b
# Writes one JSON object per variant to stdout (and its raw step lines under $OUT, when set).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL_KEY=${1:-qwen-1.5b}
STEPS=${2:-30}
WARMUP=5
OUT=${OUT:-/tmp/multi-gpu}
mkdir -p "$OUT"
FOLDER=$(python3 -c "from bench.workload import model_folder; print(model_folder('$MODEL_KEY'))" | tail -1)
DATA=${BENCH_DATA:-../shared/data/medical_o1_sample.jsonl}
cat > "$OUT/recipe.yaml" <<YAML
model: {name: $FOLDER, max_length: 2048}
data: {source: $DATA, template: plain}
train: {max_steps: $STEPS, micro_batch_size: 2, grad_accum_steps: 4, sampling: random,
        learning_rate: 2.0e-4, optimizer: adamw_8bit, max_length: 2048, save_steps: 1000}
lora: {r: 16, alpha: 16, gradient_checkpointing: true}
YAML

summarize() {  # tokens/s over the steps after the warm-up, from the run's JSON lines
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, name, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = [json.loads(line) for line in open(path) if line.startswith('{"step"')]
if len(steps) <= warmup:
    print(json.dumps({"variant": name, "error": "the run did not get past the warm-up"})); sys.exit()
first, last = steps[warmup - 1], steps[-1]
rate = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
print(json.dumps({"variant": name, "steps": last["step"], "tokens_per_s": round(rate),
                  "s_per_step": round((last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"]), 3),
                  "loss_last": last["loss"]}))
PY
}

for backend_name in ${BACKENDS:-auto hf}; do
  {
    [ "$backend_name" = hf ] && export FINETUNE_NO_UNSLOTH=1 || unset FINETUNE_NO_UNSLOTH
    CUDA_VISIBLE_DEVICES=0 timeout 240 python3 -m finetune train --config "$OUT/recipe.yaml" \
      --output "$OUT/run-$backend_name-1gpu" > "$OUT/$backend_name-1gpu.jsonl" 2> "$OUT/$backend_name-1gpu.err"
    summarize "$OUT/$backend_name-1gpu.jsonl" "$backend_name, 1 GPU, 2 x 4" $WARMUP
    CUDA_VISIBLE_DEVICES=0,1 timeout 300 accelerate launch --num_processes 2 --multi_gpu --mixed_precision no \
      -m finetune train --config "$OUT/recipe.yaml" --grad-accum 2 --output "$OUT/run-$backend_name-2gpu" \
      > "$OUT/$backend_name-2gpu.jsonl" 2> "$OUT/$backend_name-2gpu.err"
    summarize "$OUT/$backend_name-2gpu.jsonl" "$backend_name, 2 GPUs, 2 x 2 each" $WARMUP
  }
done
