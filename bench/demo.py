"""The demo end to end, wall clock: load, prepare, the default 60-step run, then the held-out
evaluation of 8 rows, base vs fine-tuned.

- `ours`: the engine's defaults on the device (what the app does): one micro-batch of 8, FP8 where it
  pays, answers from the fast decoder a batch at a time.
- `unsloth`: the same flow the seeds' way: Unsloth, micro-batch 2 x 4, answers from `generate` in
  Unsloth's inference mode at the same batch of 8.
- `unsloth-best`: as `unsloth`, trained at 8 x 1.
- `hf`: the seeds' recipe without Unsloth.

The rows are the bundled sample (the app's default dataset) tokenized by the model's tokenizer, 8 of
them held out. Every variant writes the checkpoints the engine writes by default (ten a run). The
models are random-init, so no answer ends early: each is `new_tokens` long, as a long reasoning is.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

import torch

from bench.answers import prepare_for_answers
from bench.measure import device_name, load, peak_gb, recipe_summary, variant_recipe
from finetune.config import DataSettings
from finetune.data.prompts import prepare_dataset
from finetune.evaluate.heldout import EvalSettings, evaluate
from finetune.train.recipe import Recipe
from finetune.train.trainer import start_training

HELD_OUT = 8
MAX_LENGTH = 2048


def run_demo(variant: str, model: str, steps: int, new_tokens: int) -> dict:
    phases = {}
    started = last = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal last
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        phases[name] = round(now - last, 2)
        last = now

    loaded = load(variant, model, MAX_LENGTH)
    phase("load")
    source = DataSettings(holdout_rows=HELD_OUT)
    data = prepare_dataset(source, loaded.tokenizer, MAX_LENGTH)
    heldout, data = data.heldout, dataclasses.replace(data, heldout=[])  # evaluated below, the same way for all
    phase("prepare")
    _, train, lora = variant_recipe(variant)
    train = dataclasses.replace(train, max_steps=steps)
    with tempfile.TemporaryDirectory() as output:
        job = start_training(loaded, data, Recipe(loaded.settings, source, train, lora, output))
        job.wait()
    if job.status != "done":
        raise RuntimeError(f"{variant} training {job.status}: {job.error}")
    phase("train")
    prepare_for_answers(loaded, variant)
    settings = EvalSettings(max_new_tokens=new_tokens, batch_size=HELD_OUT, template=data.template,
                            max_length=MAX_LENGTH, fast=variant == "ours")
    report = evaluate(loaded, heldout, settings)
    phase("evaluate")
    return {"bench": "demo", "variant": variant, "backend": loaded.info.backend, "model": model,
            "device": device_name(), "recipe": recipe_summary(train, lora, MAX_LENGTH), "steps": steps,
            "train_rows": len(data.rows), "held_out_rows": len(heldout), "new_tokens": new_tokens,
            "wall_s": round(time.perf_counter() - started, 2), "phases_s": phases, "peak_memory_gb": peak_gb(),
            "final_loss": round(job.metrics[-1]["loss"], 4),
            "heldout_loss": {side: report.metrics[side]["heldout_loss"] for side in report.metrics},
            "decoder": {side: report.metrics[side]["decoder"] for side in report.metrics}}
