"""Evaluation throughput: held-out answers for real medical-o1 questions, base then fine-tuned.

The engine's own path (`finetune.evaluate.heldout.generate_answers`) on the same 8 questions at the
same batch, greedy, with a LoRA adapter whose B matrices are random (a trained one is not zero):
- `ours`: the fast decoder, a batch at a time (adapter merged, static cache, one CUDA graph a step);
- `unsloth`, `unsloth-best`: transformers' `generate` on the 4-bit model in Unsloth's inference mode,
  what the seeds do (the two differ only in training, so either stands for Unsloth here);
- `hf`: `generate` on the 4-bit model without Unsloth.

Each variant first runs a few steps of one batch and stops (the decoder's build and graph capture,
Unsloth's first-call compiles), then writes both sides' answers in full, timed. The answers' texts
come back so that the parent can compare them across variants (`agreement`).
"""

from __future__ import annotations

import threading
import time

import torch

from bench.measure import device_name, peak_gb, perturb_adapter
from bench.workload import medical_o1_file
from finetune.config import LoraSettings
from finetune.evaluate.heldout import EvalSettings, generate_answers, load_eval_items
from finetune.models.adapters import attach_fresh_adapter
from finetune.models.load import LoadedModel

WARMUP_STEPS = 4


def prepare_for_answers(loaded: LoadedModel, variant: str) -> None:
    """Unsloth's inference mode where the seeds generate with Unsloth; nothing for the fast decoder."""
    loaded.model.eval()
    if loaded.info.backend == "unsloth" and variant != "ours":
        from unsloth import FastLanguageModel  # CUDA only: imported where Unsloth is the backend

        FastLanguageModel.for_inference(loaded.model)


def run_answers(loaded: LoadedModel, variant: str, model: str, new_tokens: int, rows: int, batch: int) -> dict:
    torch.manual_seed(0)  # the same adapter in every variant's process, so the greedy texts can agree
    attach_fresh_adapter(loaded, LoraSettings(gradient_checkpointing=False))
    perturb_adapter(loaded.model)
    prepare_for_answers(loaded, variant)
    items = load_eval_items(str(medical_o1_file()), limit=rows)
    settings = EvalSettings(max_new_tokens=new_tokens, batch_size=batch, temperature=0.0, fast=variant == "ours")
    warm_up(loaded, items[:batch], settings)
    sides = {}
    for side, use_adapter in (("base", False), ("finetuned", True)):
        steps: list[tuple[int, int]] = []
        decoders: list[str] = []
        started = time.perf_counter()
        results = generate_answers(loaded, items, settings, use_adapter,
                                   on_step=lambda *s, steps=steps: steps.append(s), decoders=decoders)
        seconds = time.perf_counter() - started
        tokens = _tokens_written(steps)
        sides[side] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                       "decoder": decoders[0], "texts": [r.reasoning + "\x00" + r.answer for r in results]}
    seconds = sum(s["seconds"] for s in sides.values())
    tokens = sum(s["tokens"] for s in sides.values())
    return {"bench": "eval", "variant": variant, "backend": loaded.info.backend, "model": model,
            "device": device_name(), "rows": len(items), "batch": batch, "new_tokens": new_tokens,
            "seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "peak_memory_gb": peak_gb(), "sides": sides}


def warm_up(loaded: LoadedModel, items, settings: EvalSettings) -> None:
    """One batch, stopped after a few steps: builds what the first real batch would otherwise build."""
    stop = threading.Event()

    def count(steps: int, _tokens: int) -> None:
        if steps >= WARMUP_STEPS:
            stop.set()

    for use_adapter in (False, True):
        stop.clear()
        generate_answers(loaded, items, settings, use_adapter, stop=stop, on_step=count)


def _tokens_written(steps: list[tuple[int, int]]) -> int:
    """Tokens written over all batches: `on_step` counts from zero again at each batch's first step."""
    total, last = 0, 0
    for step, tokens in steps:
        if step == 1:
            total += last
        last = tokens
    return total + last


def agreement(results: list[dict]) -> dict:
    """Per variant against the first: how many answers are the same text, and the mean share of each
    answer's characters that agree from the start before the first difference."""
    first = next((r for r in results if "sides" in r), None)
    out = {}
    for r in results:
        if "sides" not in r or first is None:
            continue
        same, shares = 0, []
        for side in ("base", "finetuned"):
            for a, b in zip(first["sides"][side]["texts"], r["sides"][side]["texts"], strict=True):
                same += a == b
                common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                shares.append(common / max(len(a), len(b), 1))
        out[r["variant"]] = {"against": first["variant"], "same_answers": same, "answers": len(shares),
                             "mean_common_prefix": round(sum(shares) / len(shares), 3)}
    return out
