"""One LoRA SFT run, top to bottom: attach a fresh adapter, build the trainer, train, save.

    job = start_training(loaded, dataset, TrainSettings(), LoraSettings(), "runs/demo")
    for metrics in job.follow(): print(metrics)

The run happens in a background thread; `TrainingJob` carries its metrics, status and result.
"""

from __future__ import annotations

import json
import math
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from transformers import PrinterCallback, Trainer, TrainerCallback
from trl import SFTTrainer

from finetune.adapters import attach_fresh_adapter, restore_4bit_training_layout
from finetune.config import LoraSettings, TrainSettings
from finetune.formats import PreparedDataset
from finetune.job import TrainingBusy, TrainingJob
from finetune.models import LoadedModel


def start_training(
    loaded: LoadedModel, data: PreparedDataset, train: TrainSettings, lora: LoraSettings, output_dir: str | Path
) -> TrainingJob:
    """Start a run in a background thread and return its job; TrainingBusy if one is running."""
    if not data.rows:
        raise ValueError(f"{data.name}: no rows left to train on (every row was dropped; raise max length)")
    with loaded.start_lock:
        if loaded.job is not None and loaded.job.running:
            raise TrainingBusy(loaded.job)
        job = TrainingJob(total_steps=planned_steps(len(data.rows), train), output_dir=str(output_dir))
        loaded.job = job
    job.thread = threading.Thread(
        target=_run_job, args=(loaded, data, train, lora, Path(output_dir), job), name="training", daemon=True
    )
    job.thread.start()
    return job


def planned_steps(rows: int, train: TrainSettings) -> int:
    if train.max_steps is not None:
        return train.max_steps
    per_epoch = math.ceil(rows / (train.micro_batch_size * train.grad_accum_steps))
    return max(1, math.ceil(per_epoch * train.epochs))


def _run_job(loaded, data, train, lora, output_dir, job) -> None:
    try:
        with loaded.lock:  # waits for a chat in progress to finish; chat waits for us in turn
            result = run_training(loaded, data, train, lora, output_dir, job)
            if data.heldout and result["status"] == "done":
                result["eval"] = evaluate_heldout(loaded, data, train, output_dir, job)
        job.finish(result["status"], result=result)
    except Exception as err:  # the job ends with a readable error; the app and base model stay usable
        traceback.print_exc()
        job.finish("failed", error=explain_failure(err, train))
    finally:
        loaded.model.eval()
        if loaded.device == "cuda":
            import torch

            torch.cuda.empty_cache()  # hand back what a failed (e.g. out-of-memory) step held


def run_training(
    loaded: LoadedModel, data: PreparedDataset, train: TrainSettings, lora: LoraSettings, output_dir: Path, job
) -> dict:
    model = attach_fresh_adapter(loaded, lora)
    restore_4bit_training_layout(model)
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)
    trainer = ReasoningSFTTrainer(
        model=model,
        args=build_sft_config(train, output_dir, loaded.device),
        train_dataset=data.to_hf_dataset(),
        processing_class=loaded.tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; our job records them
    trainer.add_callback(JobCallback(job, trainer))
    trainer.train()
    model.eval()
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    status = "stopped" if job.stop_requested.is_set() else "done"
    return save_run(loaded, data, train, lora, output_dir, job, status)


def evaluate_heldout(loaded: LoadedModel, data: PreparedDataset, train: TrainSettings, output_dir: Path,
                     job: TrainingJob) -> dict:
    """Base vs fine-tuned on the rows held out of this run; the figures join run.json.

    The held-out rows go to heldout.jsonl and the per-question answers to eval.json, so the
    Evaluate tab and `python -m finetune eval` can look at them again.
    """
    from finetune.evaluate import EvalSettings, evaluate, item_rows, save_items

    settings = EvalSettings(template=data.template, max_length=train.max_length,
                            max_new_tokens=train.eval_max_new_tokens, generate=train.eval_generate)
    names = {"base": "base", "finetuned": "fine-tuned"}

    def progress(model: str, done: int, total: int) -> None:
        job.evaluating = f"{names[model]} {done}/{total}"

    job.evaluating = f"held-out loss on {len(data.heldout)} rows"
    try:
        report = evaluate(loaded, data.heldout, settings, stop=job.stop_requested, on_progress=progress)
    finally:
        job.evaluating = None
    save_items(data.heldout, output_dir / "heldout.jsonl")
    (output_dir / "eval.json").write_text(json.dumps({**report.as_dict(), "items": item_rows(report)}, indent=2))
    record = json.loads((output_dir / "run.json").read_text())
    record["eval"] = report.as_dict()
    (output_dir / "run.json").write_text(json.dumps(record, indent=2, default=str))
    return report.as_dict()


def build_sft_config(train: TrainSettings, output_dir: Path, device: str):
    from trl import SFTConfig

    bf16, fp16 = _precision_flags(train.precision, device)
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.grad_accum_steps,
        warmup_steps=train.warmup_steps,
        max_steps=train.max_steps if train.max_steps is not None else -1,
        num_train_epochs=train.epochs,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        optim=train.optimizer,
        weight_decay=train.weight_decay,
        max_length=train.max_length,  # rows are already truncated to it; TRL's own cut is then a no-op
        bf16=bf16,
        fp16=fp16,
        use_cpu=device != "cuda",
        seed=train.seed,
        logging_steps=1,  # one point per step for the live plot
        save_strategy="no",  # we save the adapter ourselves, once, at the end
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
        gradient_checkpointing=False,  # set on the model when the adapter is attached
        train_sampling_strategy=train.sampling,
    )


def _precision_flags(precision: str, device: str) -> tuple[bool, bool]:
    if device != "cuda" or precision == "fp32":
        return False, False
    if precision == "auto":
        import torch

        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision == "bf16", precision == "fp16"


def fused_loss_available() -> bool:
    """TRL's fused LM-head loss runs on Triton, which CPU-only torch lacks."""
    from trl.trainer import utils

    return getattr(utils, "_ChunkedLogProbFunction", None) is not None


class ReasoningSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer on pre-tokenized rows, that also runs where Triton is missing, and counts tokens.

    Without Triton (CPU), the loss falls back to the model's own cross-entropy over full logits:
    the same loss, more memory. `tokens_seen` counts non-padding tokens for the tokens/s figure.
    """

    tokens_seen = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        mask = inputs.get("attention_mask")
        self.tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if fused_loss_available():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


class JobCallback(TrainerCallback):
    """Feeds each logged step into the job, and stops the trainer when the job is asked to stop."""

    def __init__(self, job: TrainingJob, trainer: ReasoningSFTTrainer):
        self.job = job
        self.trainer = trainer
        self.last_time = time.perf_counter()
        self.last_tokens = 0
        self.started = self.last_time

    def on_step_end(self, args, state, control, **kwargs):
        if self.job.stop_requested.is_set():
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # the final summary log (train_runtime, ...) has no per-step loss
        now = time.perf_counter()
        tokens = self.trainer.tokens_seen
        elapsed = now - self.started
        step, total = state.global_step, state.max_steps
        self.job.record(
            {
                "step": step,
                "total_steps": total,
                "loss": round(float(logs["loss"]), 5),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "grad_norm": round(float(logs.get("grad_norm", float("nan"))), 5),
                "tokens_per_s": round((tokens - self.last_tokens) / max(now - self.last_time, 1e-9), 1),
                "elapsed_s": round(elapsed, 2),
                "tokens": tokens,
                "eta_s": round(elapsed / step * (total - step), 1) if step else None,
            }
        )
        self.last_time, self.last_tokens = now, tokens


def save_run(loaded, data, train, lora, output_dir: Path, job: TrainingJob, status: str) -> dict:
    """Write the adapter, the tokenizer and run.json (settings, data stats, metrics) to the run folder."""
    adapter_dir = output_dir / "adapter"
    loaded.model.save_pretrained(str(adapter_dir))
    loaded.tokenizer.save_pretrained(str(adapter_dir))
    loaded.adapter_dir = adapter_dir
    losses = [m["loss"] for m in job.metrics]
    result = {
        "status": status,
        "steps": job.metrics[-1]["step"] if job.metrics else 0,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "adapter": str(adapter_dir),
        "runtime_s": round(time.time() - job.started_at, 1),
    }
    record = {
        **result,
        "model": asdict(loaded.info),
        "dataset": {"name": data.name, "template": data.template, "stats": asdict(data.stats)},
        "train": asdict(train),
        "lora": asdict(lora),
        "metrics": job.metrics,
    }
    (output_dir / "run.json").write_text(json.dumps(record, indent=2, default=str))
    return result


def explain_failure(err: Exception, train: TrainSettings) -> str:
    """One sentence on what went wrong and what to change."""
    text = f"{type(err).__name__}: {err}".strip()
    if "out of memory" in text.lower():
        return (
            f"Out of memory. Lower the micro-batch size (now {train.micro_batch_size}) or max length "
            f"(now {train.max_length}), or turn on 4-bit loading and gradient checkpointing."
        )
    return f"Training failed: {text.splitlines()[0][:500]}"
