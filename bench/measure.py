"""One measurement in one process: a training run or a chat, for one variant on one model.

Variants:
- `hf`: transformers + PEFT (+ bitsandbytes 4-bit on a GPU) + TRL with the seeds' recipe.
- `unsloth`: Unsloth with the seeds' recipe (GPU only).
- `unsloth-best`: Unsloth at its best for the same work: the seeds' recipe at the same effective batch
  of 8 as one micro-batch of 8 (8 x 1), as `ours` trains it; the setting any Unsloth user can choose.
  Every ratio is reported against it (GPU only).
- `ours`: the engine's defaults for the device (what the app and the CLI use).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import torch

from bench.workload import medical_o1_file, model_folder, synthetic_dataset
from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings, lora_for_device
from finetune.data.prompts import prepare_dataset
from finetune.generate.fast_decode import FastDecoder, Sampling, decoder_for
from finetune.models.adapters import attach_fresh_adapter
from finetune.models.backend import default_device as device
from finetune.models.load import LoadedModel, load_model
from finetune.train.recipe import Recipe
from finetune.train.trainer import start_training


def seeds_recipe() -> TrainSettings:
    """The seeds' recipe: micro-batch 2 x grad-accum 4, adamw_8bit, bf16 (fp32 and adamw_torch on CPU)."""
    if device() == "cuda":
        return TrainSettings()
    return TrainSettings(optimizer="adamw_torch")


def variant_recipe(variant: str) -> tuple[str, TrainSettings, LoraSettings]:
    """(backend, training settings, LoRA settings) of a variant.

    BENCH_OURS="sampling=group_by_length,fp8_matmuls=false" tries other settings for `ours` (any
    field of TrainSettings or LoraSettings); the JSON records the recipe that ran.
    """
    if variant == "ours":
        train = TrainSettings.for_device(device())
        if device() == "cpu":  # the CPU demo recipe trains a smaller batch; compare at the seeds' batch of 8
            train = dataclasses.replace(train, micro_batch_size=8, grad_accum_steps=1, learning_rate=2e-4,
                                        warmup_steps=TrainSettings().warmup_steps)
        return "auto", *_with_overrides(train, lora_for_device(device()), os.environ.get("BENCH_OURS", ""))
    if variant == "unsloth-best":
        return "unsloth", dataclasses.replace(seeds_recipe(), micro_batch_size=8, grad_accum_steps=1), \
            LoraSettings(gradient_checkpointing=True)
    return variant, seeds_recipe(), LoraSettings(gradient_checkpointing=True)


def _with_overrides(train: TrainSettings, lora: LoraSettings, overrides: str) -> tuple[TrainSettings, LoraSettings]:
    for item in filter(None, overrides.split(",")):
        key, value = item.split("=", 1)
        target = train if key in {f.name for f in dataclasses.fields(train)} else lora
        current = getattr(target, key)  # an unknown name fails here, before anything runs
        value = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
        if target is train:
            train = dataclasses.replace(train, **{key: value})
        else:
            lora = dataclasses.replace(lora, **{key: value})
    return train, lora


def load(variant: str, model: str, max_length: int) -> LoadedModel:
    backend = variant_recipe(variant)[0]
    loaded = load_model(ModelSettings(model_folder(model), load_in_4bit=device() == "cuda", max_length=max_length,
                                      backend=backend))
    vocab = loaded.model.config.vocab_size
    if loaded.tokenizer.pad_token_id is None or loaded.tokenizer.pad_token_id >= vocab:
        loaded.tokenizer.pad_token = loaded.tokenizer.convert_ids_to_tokens(0)
    return loaded


def run_train(variant: str, model: str, steps: int, warmup: int, max_length: int) -> dict:
    """Train `steps` steps; throughput and s/step count only the steps after `warmup`."""
    if device() == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loaded = load(variant, model, max_length)
    _, train, lora = variant_recipe(variant)
    # One checkpoint, at the end: the engine's ten a run would time disk writes, not training.
    train = dataclasses.replace(train, max_steps=steps, save_steps=steps)
    rows = steps * train.micro_batch_size * train.grad_accum_steps
    data = synthetic_dataset(rows, max_length, loaded.model.config.vocab_size)
    with tempfile.TemporaryDirectory() as output:
        # The rows are synthetic_dataset's: the recipe's data section is the default, never read back.
        job = start_training(loaded, data, Recipe(loaded.settings, DataSettings(), train, lora, output))
        job.wait()
    if job.status != "done":
        raise RuntimeError(f"{variant} training {job.status}: {job.error}")
    before, last = job.metrics[warmup - 1], job.metrics[-1]
    seconds = last["elapsed_s"] - before["elapsed_s"]
    return {
        "bench": "train",
        "variant": variant,
        "backend": loaded.info.backend,
        "model": model,
        "device": device_name(),
        "recipe": recipe_summary(train, lora, max_length),
        "steps": steps,
        "warmup_steps": warmup,
        "tokens_per_s": round((last["tokens"] - before["tokens"]) / seconds, 1),
        "s_per_step": round(seconds / (steps - warmup), 3),
        "peak_memory_gb": peak_gb(),
        "load_s": loaded.info.load_seconds,
        "fp8_matmuls": job.result["fp8_matmuls"],
        "losses": [m["loss"] for m in job.metrics],
    }


HELD_OUT_ROWS = 16


def run_curve(variant: str, model: str, steps: int, seed: int, max_length: int) -> dict:
    """Train on real text (the medical-o1 rows, real tokenizer) and measure the loss on held-out rows.

    The last 16 rows are never trained on. `seed` changes the order in which rows are seen, so runs
    of one variant with different seeds show how much the curve moves by chance alone.
    """
    loaded = load(variant, model, max_length)
    _, train, lora = variant_recipe(variant)
    train = dataclasses.replace(train, max_steps=steps, seed=seed)
    source = DataSettings(source=str(medical_o1_file()))
    data = prepare_dataset(source, loaded.tokenizer, max_length)
    held_out = data.rows[-HELD_OUT_ROWS:]
    data = dataclasses.replace(data, rows=data.rows[:-HELD_OUT_ROWS])
    before = _held_out_loss(loaded.model, held_out)
    with tempfile.TemporaryDirectory() as output:
        job = start_training(loaded, data, Recipe(loaded.settings, source, train, lora, output))
        job.wait()
    if job.status != "done":
        raise RuntimeError(f"{variant} training {job.status}: {job.error}")
    return {
        "bench": "curve",
        "variant": variant,
        "backend": loaded.info.backend,
        "model": model,
        "device": device_name(),
        "seed": seed,
        "recipe": recipe_summary(train, lora, max_length),
        "steps": steps,
        "train_rows": len(data.rows),
        "held_out_rows": len(held_out),
        "held_out_loss_before": round(before, 4),
        "held_out_loss_after": round(_held_out_loss(loaded.model, held_out), 4),
        "fp8_matmuls": job.result["fp8_matmuls"],
        "losses": [round(m["loss"], 4) for m in job.metrics],
    }


def _held_out_loss(model, rows) -> float:
    """Mean loss over the trained tokens (reasoning and answer) of each held-out row."""
    model.eval()
    device_ = next(model.parameters()).device
    with torch.inference_mode():
        losses = [float(model(input_ids=torch.tensor([r.input_ids], device=device_),
                              labels=torch.tensor([r.labels], device=device_)).loss) for r in rows]
    return sum(losses) / len(losses)


def recipe_summary(train: TrainSettings, lora: LoraSettings, max_length: int) -> dict:
    return {
        "micro_batch_size": train.micro_batch_size,
        "grad_accum_steps": train.grad_accum_steps,
        "sampling": train.sampling,
        "optimizer": train.optimizer,
        "learning_rate": train.learning_rate,
        "max_length": max_length,
        "gradient_checkpointing": lora.gradient_checkpointing,
        "offload_activations": lora.offload_activations,
    }


class _TimingStreamer:
    """Records when each generated token arrives (the first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def run_chat(variant: str, model: str, new_tokens: int, prompt_tokens: int = 64) -> dict:
    """Batch-1 greedy chat with a LoRA adapter on: time to first token and decode speed.

    `ours` is the engine's chat path: the fast decoder (`finetune.generate.fast_decode`) where it applies.
    """
    loaded = load(variant, model, 2048)
    attach_fresh_adapter(loaded, LoraSettings(gradient_checkpointing=False))
    perturb_adapter(loaded.model)
    model_ = loaded.model
    model_.eval()
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel  # CUDA only: imported where Unsloth is the backend

        FastLanguageModel.for_inference(model_)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, model_.config.vocab_size, (1, prompt_tokens), generator=generator)
    prompt = prompt.to(model_.device)
    result = {"bench": "chat", "variant": variant, "backend": loaded.info.backend, "model": model,
              "device": device_name(), "decoder": "transformers generate"}
    with torch.inference_mode():
        if variant == "ours":
            times, extra = _ours_decode(loaded, prompt, new_tokens)
            result.update(extra)
        else:
            times = _generate_decode(loaded, prompt, new_tokens)
    return {
        "peak_memory_gb": peak_gb(),  # ours: measured before its float32 accuracy reference is built
        **result,
        "new_tokens": len(times) - 1,
        "first_token_s": round(times[1] - times[0], 4),
        "decode_tokens_per_s": round((len(times) - 2) / (times[-1] - times[1]), 1),
    }


def perturb_adapter(model) -> None:
    """A fresh adapter's B is zero; make it count, as a trained one does."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01, generator=None)


def _generate_decode(loaded: LoadedModel, prompt: torch.Tensor, new_tokens: int) -> list[float]:
    """transformers' generate: [start, time of each token]."""
    kwargs = dict(do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    loaded.model.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
    streamer = _TimingStreamer()
    started = time.perf_counter()
    loaded.model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=streamer, **kwargs)
    return [started, *streamer.times]


def _ours_decode(loaded: LoadedModel, prompt: torch.Tensor, new_tokens: int) -> tuple[list[float], dict]:
    """The fast decoder: built (weights merged, graph captured) once, then timed on a second reply.

    BENCH_DECODER=4bit measures the decoder over the model's own 4-bit weights, which the engine picks
    where no 16-bit copy fits (e.g. Llama-8B on a 24 GB GPU), on any GPU."""
    started = time.perf_counter()
    weights = "4bit" if os.environ.get("BENCH_DECODER") == "4bit" else None
    decoder = decoder_for(loaded, True, prompt.shape[1] + new_tokens, weights=weights)
    if decoder is None:
        return _generate_decode(loaded, prompt, new_tokens), {}
    greedy, no_eos = Sampling(), set()
    list(decoder.generate(prompt[0], 8, greedy, no_eos))  # warm-up: captures the CUDA graph
    built = time.perf_counter() - started
    times = [time.perf_counter()]
    for _ in decoder.generate(prompt[0], new_tokens, greedy, no_eos):
        times.append(time.perf_counter())
    return times, {"decoder": decoder.description, "build_s": round(built, 2), "peak_memory_gb": peak_gb(),
                   **_logits_errors(loaded, decoder, prompt)}


def _logits_errors(loaded: LoadedModel, decoder, prompt: torch.Tensor, steps: int = 8) -> dict:
    """How far the fast decoder's logits are from a float32 reference, next to how far the model's
    own 16-bit forward is: the prompt, then `steps` more tokens fed one at a time (graph replays).

    The reference is the same merged weights run in float32 by the same code, which the CPU tests
    check against transformers token for token.
    """
    tokens = torch.cat([prompt[0], prompt[0, :steps]])
    reference = FastDecoder(loaded.model, decoder.capacity, dtype=torch.float32)
    reference.load_weights(loaded.model, use_adapter=True)

    def run(dec) -> torch.Tensor:
        logits = [dec.prefill(prompt[0])]
        logits += [dec.step(tokens[i].view(1), i).clone() for i in range(prompt.shape[1], len(tokens))]
        return torch.stack(logits)

    truth, ours = run(reference), run(decoder)
    model_logits = loaded.model(input_ids=tokens.view(1, -1)).logits[0, prompt.shape[1] - 1 :].float()
    del reference

    def error(logits: torch.Tensor) -> float:
        return round(float((logits - truth).abs().max() / truth.abs().max()), 4)

    return {"logits_error_ours": error(ours), "logits_error_model": error(model_logits)}


def device_name() -> str:
    if device() == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device() == "cuda" else None
