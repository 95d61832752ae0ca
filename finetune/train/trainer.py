"""One LoRA SFT run, top to bottom: attach a fresh adapter, build the trainer, train, save.

    recipe = load_recipe("recipes/embedded-cpu-demo.yaml", "cpu")
    loaded = load_model(recipe.model)
    prepared = tokenize_rows(load_examples(recipe.data.source), recipe.data, loaded.tokenizer, recipe.model.max_length)
    job = start_training(loaded, prepared, recipe)
    for metrics in job.follow(): print(metrics)

The run happens in a background thread; `TrainingJob` carries its metrics, status and result.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import threading
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from finetune.quiet import drop_library_advisories, no_dataset_progress_bars

drop_library_advisories()  # before transformers' Trainer imports PEFT, whose bitsandbytes advises at import

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402
from trl.trainer import utils as trl_utils  # noqa: E402

from finetune.config import DataSettings, LoraSettings, TrainSettings  # noqa: E402
from finetune.data.prompts import LengthStats, PreparedDataset, TokenizedRow  # noqa: E402
from finetune.evaluate.heldout import (  # noqa: E402
    EvalProgress,
    EvalSettings,
    evaluate,
    item_rows,
    load_eval_items,
    save_items,
)
from finetune.models.adapters import (  # noqa: E402
    attach_fresh_adapter,
    nonfinite_weight,
    remove_adapter,
    restore_4bit_training_layout,
)
from finetune.models.backend import is_main_process  # noqa: E402
from finetune.models.load import LoadedModel, release_memory  # noqa: E402
from finetune.runs import (  # noqa: E402
    RunFolder,
    RunFolderError,
    append_metric,
    check_writable,
    checkpoint_step,
    disk_error,
    last_checkpoint,
    process_identity,
    read_metrics,
    read_record,
    run_max_length,
    run_template,
    update_record,
    write_json_atomic,
    write_metrics,
)
from finetune.train.fp8_matmul import fp8_base_matmuls, fp8_calls, fp8_supported, fp8_worthwhile  # noqa: E402
from finetune.train.job import TrainingBusy, TrainingJob  # noqa: E402
from finetune.train.recipe import Recipe, save_recipe  # noqa: E402


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or a trained weight became NaN or infinite: nothing of the run is kept."""


def start_training(
    loaded: LoadedModel,
    data: PreparedDataset,
    recipe: Recipe,
    resume_from: Path | None = None,
) -> TrainingJob:
    """Start a run of `recipe` (its train and LoRA settings, at its model.max_length, into its `output` folder)
    in a background thread and return its job; TrainingBusy if one is running. `data` is the rows the
    recipe's data settings gave, tokenized at that length (`tokenize_rows`).

    The run folder gets run.json ("running"), the rows and the recipe before the first step, so it
    is readable whatever happens next; RunFolderError if it cannot be written."""
    if not data.rows:
        raise ValueError(f"{data.name}: no rows left to train on (every row was dropped; raise max length)")
    if recipe.output is None:
        raise ValueError("the recipe names no output folder for the run")
    run = RunFolder(recipe.output)
    if is_main_process():  # under accelerate launch, one process per GPU: the first writes the folder
        check_writable(run.path)
    with loaded.start_lock:
        if loaded.job is not None and loaded.job.running:
            raise TrainingBusy(loaded.job)
        total = planned_steps(len(data.rows), recipe.train)
        if is_main_process():
            write_run_start(run, loaded, data, recipe, total, resume_from)
        job = TrainingJob(total_steps=total, output_dir=str(run.path))
        job.holdout = data.holdout
        if resume_from is not None:  # the curve so far, up to the step training continues from
            job.metrics = read_metrics(run.path, checkpoint_step(resume_from))
            if is_main_process():
                write_metrics(run.path, job.metrics)
        loaded.job = job
    job.thread = threading.Thread(
        target=_run_job, args=(loaded, data, recipe, run, job, resume_from), name="training", daemon=True
    )
    job.thread.start()
    return job


def resume_training(loaded: LoadedModel, run_dir: str | Path) -> TrainingJob:
    """Continue a stopped, failed or interrupted run from its last checkpoint, with its own rows and settings."""
    run = RunFolder(run_dir)
    record = read_record(run.path)
    name = run.path.name
    if record.get("status") == "running":
        raise RunFolderError(f"{name} is still running")
    if record.get("status") == "done":
        raise RunFolderError(f"{name} has already finished all its {record.get('steps')} steps")
    if record.get("diverged"):
        raise RunFolderError(f"{name} diverged (its loss became non-finite); start a new run with a lower "
                             "learning rate")
    checkpoint = last_checkpoint(run.path)
    if checkpoint is None:
        raise RunFolderError(f"{name} has no checkpoint yet (it ended before the first one); start it again")
    trained_on = record.get("model", {}).get("name")
    if trained_on != loaded.info.name:
        raise RunFolderError(f"{name} trained {trained_on}; load that model before resuming it")
    return start_training(loaded, read_prepared(run, record), resumed_recipe(run, record, loaded),
                          resume_from=checkpoint)


def resumed_recipe(run: RunFolder, record: dict, loaded: LoadedModel) -> Recipe:
    """The settings a run trained with, from its run.json (what ran; recipe.yaml is there to repeat it).

    The data settings keep only the template and columns: a resume trains on the tokenized rows the run
    kept (train_rows.jsonl), whatever the source holds now."""
    train = dict(record["train"])
    train.pop("max_length", None)  # run.json of a run from before model.max_length was its one length
    model = replace(loaded.settings, max_length=run_max_length(record) or loaded.settings.max_length)
    data = DataSettings(template=run_template(record), columns=record.get("dataset", {}).get("columns", {}))
    return Recipe(model, data, TrainSettings(**train), LoraSettings(**record["lora"]), str(run.path))


def planned_steps(rows: int, train: TrainSettings) -> int:
    if train.max_steps is not None:
        return train.max_steps
    per_epoch = math.ceil(rows / (train.micro_batch_size * train.grad_accum_steps))
    return max(1, math.ceil(per_epoch * train.epochs))


def _run_job(loaded: LoadedModel, data: PreparedDataset, recipe: Recipe, run: RunFolder, job: TrainingJob,
             resume_from: Path | None = None) -> None:
    status, result, error = "failed", None, None
    try:
        with loaded.lock:  # waits for a chat in progress to finish; chat waits for us in turn
            result = run_training(loaded, data, recipe, run, job, resume_from)
            if data.heldout and result["status"] == "done" and is_main_process():
                result["eval"] = evaluate_heldout(loaded, data, recipe, run, job)
        status = result["status"]
    except Exception as err:  # the job ends with a readable error; the app and base model stay usable
        traceback.print_exc()
        error = explain_failure(err, recipe)
        if is_main_process():
            with contextlib.suppress(OSError, RunFolderError):  # a full disk may refuse this too
                update_record(run.path, status="failed", error=error,
                              **({"diverged": True} if isinstance(err, TrainingDiverged) else {}))
    finally:
        loaded.model.eval()
        release_memory(loaded.device)  # the trainer, its optimizer, a failed step's buffers
        # Last: whoever waits on the job (the CLI exits then) finds this thread done with torch.
        job.finish(status, result=result, error=error)


def run_training(
    loaded: LoadedModel,
    data: PreparedDataset,
    recipe: Recipe,
    run: RunFolder,
    job: TrainingJob,
    resume_from: Path | None = None,
) -> dict:
    train = recipe.train
    model = attach_fresh_adapter(loaded, recipe.lora)
    restore_4bit_training_layout(model)
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel  # CUDA only: imported where Unsloth is the backend

        FastLanguageModel.for_training(model)
    with no_dataset_progress_bars():
        trainer = ReasoningSFTTrainer(
            model=model,
            args=build_sft_config(train, recipe.model.max_length, run.path, loaded.device, job.total_steps),
            train_dataset=data.to_hf_dataset(),
            processing_class=loaded.tokenizer,
        )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; our job records them
    trainer.add_callback(JobCallback(job, trainer, run))
    fp8 = fp8_applies(loaded, train)
    # A resume loads the checkpoint's adapter, optimizer, schedule and data position, then goes on.
    with fp8_base_matmuls(model) if fp8 else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    model.eval()
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel  # CUDA only: imported where Unsloth is the backend

        FastLanguageModel.for_inference(model)
    check_finite(loaded, job, train, run, trainer.state.global_step)
    # A Stop pressed during the last step still leaves a finished run: it is done, and evaluated (a Stop
    # pressed from here on ends that evaluation).
    finished = trainer.state.global_step >= trainer.state.max_steps
    if finished:
        job.stop_requested.clear()
    status = "done" if finished else "stopped"
    # Whether the FP8 path really ran: a model Unsloth did not patch never reaches it.
    return save_run(loaded, run, job, status, fp8_matmuls=fp8 and fp8_calls() > 0)


def check_finite(loaded: LoadedModel, job: TrainingJob, train: TrainSettings, run: RunFolder, step: int) -> None:
    """Raise TrainingDiverged, and keep nothing of the run, if its loss, gradients or weights went non-finite:
    an all-NaN adapter must be neither exported nor resumed (its checkpoints would diverge the same way)."""
    weight = nonfinite_weight(loaded.model)
    if job.diverged is None and weight is None:
        return
    what = job.diverged or f"The trained LoRA weight {weight} became NaN or infinite by step {step}"
    remove_adapter(loaded)  # chat's fine-tuned pane then says there is no adapter, rather than answer NaNs
    if is_main_process():
        # adapter/ too: one a Stop saved before a resume belongs to a run that is now failed and not resumable.
        for folder in [*run.checkpoints(), run.adapter]:
            shutil.rmtree(folder, ignore_errors=True)
    raise TrainingDiverged(f"{what}: training diverged. Lower the learning rate (now {train.learning_rate:g}) "
                           "and start again; nothing was kept to export or resume.")


def nonfinite_log(logs: dict, step: int) -> str | None:
    """'The loss became NaN at step 4' when a step's loss or gradient norm is not a finite number."""
    for key, name in (("loss", "loss"), ("grad_norm", "gradient norm")):
        value = float(logs.get(key, 0.0))
        if not math.isfinite(value):
            return f"The {name} became {'NaN' if math.isnan(value) else 'infinite'} at step {step}"
    return None


def fp8_applies(loaded: LoadedModel, train: TrainSettings) -> bool:
    """FP8 base matmuls were asked for, and this model and GPU gain from them (else 16-bit, silently:
    it is the fast recipe's default, not a user's demand; run.json says which ran)."""
    return (train.fp8_matmuls and loaded.info.backend == "unsloth" and loaded.info.quantization.startswith("4-bit NF4")
            and fp8_worthwhile(loaded.model) and fp8_supported())


def evaluate_heldout(loaded: LoadedModel, data: PreparedDataset, recipe: Recipe, run: RunFolder,
                     job: TrainingJob) -> dict:
    """Base vs fine-tuned on the rows held out of this run; the figures join run.json.

    The held-out rows go to heldout.jsonl and the per-question answers to eval.json, so the
    Evaluate tab and `python -m finetune eval` can look at them again.
    """
    train = recipe.train
    settings = EvalSettings(template=data.template, max_length=recipe.model.max_length,
                            max_new_tokens=train.eval_max_new_tokens, generate=train.eval_generate)

    def progress(update: EvalProgress) -> None:
        job.evaluating = update

    try:
        report = evaluate(loaded, data.heldout, settings, stop=job.stop_requested, on_update=progress)
    finally:
        job.evaluating = None
    save_items(data.heldout, run.heldout)
    run.eval.write_text(json.dumps({**report.as_dict(), "items": item_rows(report)}, indent=2))
    figures = {**report.as_dict(), "source": {"dataset": data.name, "rows": len(data.heldout)}}
    update_record(run.path, eval=figures)
    return figures


def build_sft_config(train: TrainSettings, max_length: int, output_dir: Path, device: str,
                     total_steps: int) -> SFTConfig:
    """TRL's settings for a run; `output_dir` (the run folder) is where the Trainer writes its checkpoints."""
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
        max_length=max_length,  # rows are already truncated to it; TRL's own cut is then a no-op
        bf16=bf16,
        fp16=fp16,
        use_cpu=device != "cuda",
        seed=train.seed,
        logging_steps=1,  # one point per step for the live plot
        logging_nan_inf_filter=False,  # else a NaN loss is logged as the average so far: JobCallback must see it
        save_strategy="steps",  # checkpoints to resume from; the final adapter is saved by save_run
        save_steps=train.save_steps or max(1, math.ceil(total_steps / 10)),
        save_total_limit=2,  # a kill while one is written leaves the one before whole
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
        gradient_checkpointing=False,  # set on the model when the adapter is attached
        train_sampling_strategy=train.sampling,
        ddp_find_unused_parameters=False,  # several GPUs: every LoRA weight gets a gradient each step
    )


def _precision_flags(precision: str, device: str) -> tuple[bool, bool]:
    """(bf16, fp16) for the trainer. On CPU, 'auto' is bf16 where the CPU computes it natively
    (AVX512-BF16 or AMX: faster than fp32, see docs/benchmarks.md), else fp32; fp16 is a GPU's."""
    if precision == "fp32" or (device != "cuda" and precision == "fp16"):
        return False, False
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_computes_bf16() else "fp32"
    return precision == "bf16", precision == "fp16"


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 instructions (emulated bf16 would be slower than fp32)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fused_loss_available() -> bool:
    """TRL's fused LM-head loss runs on Triton, which CPU-only torch lacks."""
    return getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None


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


def _sum_over_processes(count: int) -> int:
    """Tokens seen by all GPUs together (data parallel); the count itself on one."""
    if not (dist.is_available() and dist.is_initialized()):
        return count
    total = torch.tensor([count], device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(total)
    return int(total.item())


class JobCallback(TrainerCallback):
    """Feeds each logged step into the job, and stops the trainer when the job is asked to stop."""

    def __init__(self, job: TrainingJob, trainer: ReasoningSFTTrainer, run: RunFolder):
        self.job = job
        self.trainer = trainer
        self.run = run
        self.last_time = time.perf_counter()
        self.last_tokens = 0
        self.started = self.last_time
        self.first_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.job.stop_requested.is_set():
            control.should_training_stop = True
            control.should_save = True  # a checkpoint at the stop, so Resume continues from here

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # the final summary log (train_runtime, ...) has no per-step loss
        divergence = nonfinite_log(logs, state.global_step)
        if divergence and self.job.diverged is None:
            # on_log comes before this step's checkpoint is written: stop, and write none of NaN weights.
            self.job.diverged = divergence
            control.should_training_stop = True
            control.should_save = False
        now = time.perf_counter()
        tokens = _sum_over_processes(self.trainer.tokens_seen)
        elapsed = now - self.started
        step, total = state.global_step, state.max_steps
        if self.first_step is None:  # after a resume, the ETA counts only the steps run in this process
            self.first_step = step - 1
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
                "eta_s": round(elapsed / (step - self.first_step) * (total - step), 1),
            }
        )
        if state.is_world_process_zero:
            append_metric(self.run.path, self.job.metrics[-1])
        self.last_time, self.last_tokens = now, tokens


def save_run(loaded: LoadedModel, run: RunFolder, job: TrainingJob, status: str, fp8_matmuls: bool) -> dict:
    """Write the adapter and the tokenizer, and finish run.json (status, metrics) in the run folder."""
    if is_main_process():
        loaded.model.save_pretrained(str(run.adapter))
        loaded.tokenizer.save_pretrained(str(run.adapter))
    loaded.adapter_dir = run.adapter
    losses = [m["loss"] for m in job.metrics]
    result = {
        "status": status,
        "steps": job.metrics[-1]["step"] if job.metrics else 0,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "adapter": str(run.adapter),
        "runtime_s": round(time.time() - job.started_at, 1),
        "fp8_matmuls": fp8_matmuls,
    }
    if is_main_process():
        update_record(run.path, **result, error=None, metrics=job.metrics)
    return result


def write_run_start(run: RunFolder, loaded: LoadedModel, data: PreparedDataset, recipe: Recipe, total_steps: int,
                    resume_from: Path | None) -> None:
    """run.json saying "running" (and by which process), the rows and the recipe, before step one."""
    try:
        if resume_from is not None:
            update_record(run.path, status="running", owner=process_identity(), error=None,
                          resumed_from=checkpoint_step(resume_from))
            return
        write_json_atomic(run.record, {
            "status": "running",
            "owner": process_identity(),
            "total_steps": total_steps,
            "started_at": time.time(),
            "model": asdict(loaded.info),
            # stats.max_length: the length rows are cut at, the run's one length (finetune.runs.run_max_length)
            "dataset": {"name": data.name, "template": data.template, "columns": data.columns,
                        "stats": asdict(data.stats)},
            "train": asdict(recipe.train),
            "lora": asdict(recipe.lora),
        })
        write_prepared(run, data)
        write_metrics(run.path, [])
        save_recipe(recipe, run.recipe)
    except OSError as err:
        raise RunFolderError(f"Cannot write the run folder {run.path}: {disk_error(err)}") from err


def write_prepared(run: RunFolder, data: PreparedDataset) -> None:
    """The tokenized rows (and held-out rows) of a run: what a resume trains on, without the upload."""
    lines = (json.dumps({"input_ids": row.input_ids, "labels": row.labels, "full_length": row.full_length})
             for row in data.rows)
    run.train_rows.write_text("\n".join(lines) + "\n")
    if data.heldout:
        save_items(data.heldout, run.heldout)


def read_prepared(run: RunFolder, record: dict) -> PreparedDataset:
    rows = [TokenizedRow(row["input_ids"], row["labels"], "", "", row["full_length"])
            for row in map(json.loads, run.train_rows.read_text().splitlines())]
    dataset = record["dataset"]
    heldout = load_eval_items(str(run.heldout)) if run.heldout.is_file() else []
    return PreparedDataset(dataset["name"], dataset["template"], rows, LengthStats(**dataset["stats"]),
                           [row.full_length for row in rows], dataset.get("columns", {}), heldout)


def explain_failure(err: Exception, recipe: Recipe) -> str:
    """One sentence on what went wrong and what to change."""
    if isinstance(err, (RunFolderError, TrainingDiverged)):
        return str(err)
    if isinstance(err, OSError) and err.errno is not None:
        return f"Could not write the run's files: {disk_error(err)}"
    text = f"{type(err).__name__}: {err}".strip()
    if any(sign in text for sign in ("No space left", "File too large", "Disk quota")):  # e.g. from safetensors
        return "Could not write the run's files: the disk is full. Free some space or choose another output folder."
    if "out of memory" in text.lower():
        return (
            f"Out of memory. Lower the micro-batch size (now {recipe.train.micro_batch_size}) or max length "
            f"(now {recipe.model.max_length}), or turn on 4-bit loading and gradient checkpointing."
        )
    return f"Training failed: {text.splitlines()[0][:500]}"
