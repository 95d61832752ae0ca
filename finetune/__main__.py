"""Command line: train a LoRA adapter, preview what would be trained, or evaluate base vs fine-tuned.

    python -m finetune train --model embedded --dataset sample --holdout 8 --output runs/demo
    python -m finetune preview --model embedded --dataset data.jsonl --rows 2
    python -m finetune eval --model embedded --adapter runs/demo --limit 8
    python -m finetune export --adapter runs/demo --output runs/demo-adapter      # the adapter (default)
    python -m finetune export --adapter runs/demo --format gguf_q4_k_m --output runs/demo-gguf
    python -m finetune train --config recipes/embedded-cpu-demo.yaml
    python -m finetune train --resume runs/demo
    python -m finetune runs
    HF_TOKEN=... python -m finetune push runs/demo-merged --repo your-name/r1-medical

`train` prints one JSON object per step, then a final one with status, steps, loss_first,
loss_last, adapter (and eval, when rows are held out: --holdout, automatic by default). `eval`
prints one JSON object last: {"base": {...}, "finetuned": {...}}. Bad input: exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from finetune.models.backend import import_unsloth_first


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def _key_values(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected role=column pairs like question=Q,answer=A, got {text!r}")
    return dict(pairs)


HOLDOUT_AUTO = "auto"
"""--holdout auto: sized to the data (finetune.data.sources.holdout_plan); what a run does unless told otherwise."""


def _holdout(text: str) -> int | str:
    if text.strip().lower() == HOLDOUT_AUTO:
        return HOLDOUT_AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rows or {HOLDOUT_AUTO}, got {text!r}") from None


def _by_device(values: dict[str, object]) -> str:
    """A default that may differ by device, for --help: e.g. '0.002 on CPU, 0.0002 on a GPU', or 'on'."""
    cpu, gpu = (_shown(values[device]) for device in ("cpu", "cuda"))
    return cpu if cpu == gpu else f"{cpu} on CPU, {gpu} on a GPU"


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


DESCRIPTIONS = {
    "train": "Fine-tune a LoRA adapter on a chain-of-thought dataset: one JSON line per step, then the result "
             "(with the base vs fine-tuned evaluation on the held-out rows).",
    "preview": "What a run would train on, nothing trained: the column mapping, the hold-out, the token lengths and "
               "the exact training text of the first rows, as JSON lines.",
    "eval": "Base vs fine-tuned on held-out rows or a question file: progress on stderr, one JSON object last.",
    "export": "Write what a run trained, atomically: the LoRA adapter, a merged 16-bit model, or one GGUF file.",
    "push": "Upload an export folder to the Hub; the token comes from HF_TOKEN, never a flag.",
    "runs": "The runs in a folder and their status, one JSON line each; marks interrupted ones incomplete.",
}


def build_parser() -> argparse.ArgumentParser:
    from finetune.config import (
        DEFAULT_EXPORT_FORMAT,
        EVAL_MAX_NEW_TOKENS,
        SCHEDULERS,
        TEMPLATES,
        DataSettings,
        LoraSettings,
        ModelSettings,
        TrainSettings,
        lora_for_device,
    )
    from finetune.data.sources import HOLDOUT_CAP, HOLDOUT_FLOOR, HOLDOUT_SHARE, MIN_TRAIN_ROWS
    from finetune.export.save import FORMATS as EXPORT_FORMATS  # imports torch and gguf, not transformers

    parser = _OneLineParser(prog="python -m finetune", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    model, data, lora = ModelSettings(), DataSettings(), LoraSettings()
    train_by = {device: TrainSettings.for_device(device) for device in ("cpu", "cuda")}
    lora_by = {device: lora_for_device(device) for device in ("cpu", "cuda")}

    def device_default(name: str, by_device: dict = train_by) -> str:
        return _by_device({device: getattr(settings, name) for device, settings in by_device.items()})

    def add(name: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])

    for name in ("train", "preview"):
        # Each flag's default is None, so a flag given can be told from one left out (see set_defaults below);
        # --help states what a run gets when it is left out: the recipe's value, else the device's default.
        cmd = add(name)
        cmd.add_argument("--config", default=None,
                         help="a recipe file (YAML, see recipes/); flags given win (default: the device's recipe)")
        cmd.add_argument("--model", help=f"'embedded', a Hub repo id or a local folder (default: {model.name})")
        cmd.add_argument("--dataset", help="'sample', 'medical-o1', 'medical-o1-zh' or a file "
                                           f"(default: {data.source})")
        cmd.add_argument("--split", help=f"slice of a Hub dataset (default: {data.split})")
        cmd.add_argument("--columns", type=_key_values,
                         help="override mapping: question=Q,answer=A (default: detected from the column names)")
        cmd.add_argument("--template", choices=TEMPLATES,
                         help="chat: the model's chat template, a <think> block; plain: the seeds' medical ### "
                              "template; plain-neutral: ### with a neutral role and headers "
                              f"(default: {data.template})")
        cmd.add_argument("--system-prompt", help="replaces the ### templates' role; a system message for chat "
                                                 "(default: none)")
        cmd.add_argument("--max-rows", type=int, help="read only the first N rows (default: all)")
        cmd.add_argument("--max-length", type=int,
                         help=f"token limit per row (default: {device_default('max_length')})")
        cmd.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction,
                         help="4-bit NF4 weights (default: on with CUDA, off on CPU; pre-quantized repos always)")
        cmd.add_argument("--backend", choices=("auto", "unsloth", "hf"),
                         help=f"auto: Unsloth when it imports on CUDA, else transformers (default: {model.backend})")
    train = commands.choices["train"]
    train.add_argument("--output", help="run folder: adapter/, run.json (default: output: in the recipe; one is "
                                        "needed)")
    train.add_argument("--resume", default=None, metavar="RUN_FOLDER",
                       help="continue a stopped or interrupted run from its last checkpoint, with its own settings "
                            "(default: a new run)")
    train.add_argument("--save-steps", type=int, help="a checkpoint every N steps (default: ten a run)")
    train.add_argument("--max-steps", type=int,
                       help=f"optimiser steps; 0 trains --epochs instead (default: {device_default('max_steps')})")
    train.add_argument("--epochs", type=float, help=f"with --max-steps 0 (default: {device_default('epochs')})")
    train.add_argument("--batch-size", type=int,
                       help=f"micro-batch size (default: {device_default('micro_batch_size')})")
    train.add_argument("--grad-accum", type=int,
                       help=f"micro-batches per optimiser step (default: {device_default('grad_accum_steps')})")
    train.add_argument("--lr", type=float, help=f"learning rate (default: {device_default('learning_rate')})")
    train.add_argument("--warmup-steps", type=int, help=f"(default: {device_default('warmup_steps')})")
    train.add_argument("--scheduler", choices=SCHEDULERS,
                       help=f"learning-rate schedule (default: {device_default('lr_scheduler')})")
    train.add_argument("--optimizer", help=f"any of transformers' optimizer names, e.g. adamw_8bit, adamw_torch "
                                           f"(default: {device_default('optimizer')})")
    train.add_argument("--weight-decay", type=float, help=f"(default: {device_default('weight_decay')})")
    train.add_argument("--sampling", choices=("random", "group_by_length"),
                       help="batch order: random, or group_by_length (similar lengths together, less padding) "
                            f"(default: {device_default('sampling')})")
    train.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                       help="auto: bf16 where the GPU supports it, else fp16; fp32 on CPU "
                            f"(default: {device_default('precision')})")
    train.add_argument("--fp8", action=argparse.BooleanOptionalAction,
                       help="FP8 matmuls for the 4-bit base weights, where they pay (Ada/Hopper GPU, 8B-class model) "
                            f"(default: {device_default('fp8_matmuls')})")
    train.add_argument("--seed", type=int, help=f"for the data order and the adapter's start "
                                                f"(default: {device_default('seed')})")
    train.add_argument("--lora-r", type=int, help=f"LoRA rank (default: {lora.r})")
    train.add_argument("--lora-alpha", type=int, help=f"LoRA scale (default: {lora.alpha})")
    train.add_argument("--lora-dropout", type=float, help=f"(default: {lora.dropout:g})")
    train.add_argument("--target-modules", help="comma-separated projections (default: all 7, "
                                                f"{','.join(lora.target_modules)})")
    train.add_argument("--rslora", action="store_true", default=None,
                       help="rank-stabilised LoRA scaling, alpha / sqrt(r) (default: off)")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                       help="recompute activations: less memory, slower "
                            f"(default: {device_default('gradient_checkpointing', lora_by)})")
    train.add_argument("--holdout", type=_holdout, metavar="ROWS|auto",
                       help="rows kept out of training and evaluated on at the end, base vs fine-tuned; "
                            f"auto: {HOLDOUT_SHARE * 100:.0f}%% of the rows, {HOLDOUT_FLOOR} to {HOLDOUT_CAP}, "
                            f"none when fewer than {MIN_TRAIN_ROWS} would be left to train (default: {HOLDOUT_AUTO})")
    train.add_argument("--eval-generate", action=argparse.BooleanOptionalAction,
                       help="with held-out rows: generate answers too (format, accuracy), not only the loss "
                            "(default: on)")
    train.add_argument("--eval-max-new-tokens", type=int,
                       help=f"per held-out answer (default: {_by_device(EVAL_MAX_NEW_TOKENS)})")
    for name in ("train", "preview"):
        # Unset unless written on the command line: a flag given wins over the recipe, even where it says
        # what the default says (--holdout 0 over a recipe's holdout_rows: 8); one left out keeps the recipe's.
        commands.choices[name].set_defaults(**dict.fromkeys(FLAG_SETTINGS))
    commands.choices["preview"].add_argument("--rows", type=int, default=2,
                                             help="rows whose exact training text is printed (default: 2)")
    push = add("push")
    push.add_argument("folder", help="an export folder (adapter, merged model or GGUF, with its model card)")
    push.add_argument("--repo", required=True, help="owner/name of the model repo (created if missing)")
    push.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    runs = add("runs")
    runs.add_argument("--runs-dir", default="runs", help="the folder of runs (default: runs)")
    evaluate = add("eval")
    evaluate.add_argument("--model", default="embedded",
                          help="'embedded', a Hub repo id or a local folder (default: embedded)")
    evaluate.add_argument("--adapter", default=None,
                          help="a run folder or adapter folder: adds 'finetuned' (default: none, the base model only)")
    evaluate.add_argument("--dataset", default=None,
                          help="'real' (medical-o1 rows in ../shared/data, never trained on), 'sample-mcq', "
                               "'sample', or a file (default: the run's heldout.jsonl, else sample-mcq)")
    evaluate.add_argument("--columns", type=_key_values, default={},
                          help="override mapping: question=Q,answer=A (default: detected from the column names)")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N rows (default: all)")
    evaluate.add_argument("--template", choices=TEMPLATES, default=None,
                          help="how questions are prompted and answers split (default: the adapter's, else chat)")
    evaluate.add_argument("--max-new-tokens", type=int, default=None,
                          help=f"per answer (default: {_by_device(EVAL_MAX_NEW_TOKENS)})")
    evaluate.add_argument("--batch-size", type=int, default=8, help="questions generated together (default: 8)")
    evaluate.add_argument("--temperature", type=float, default=None,
                          help="0: greedy (default: 0.6, DeepSeek's R1 advice)")
    evaluate.add_argument("--seed", type=int, default=0, help="for sampling (default: 0)")
    evaluate.add_argument("--max-length", type=int, default=2048, help="token limit per row (default: 2048)")
    evaluate.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                          help="4-bit NF4 weights (default: on with CUDA, off on CPU)")
    export = add("export")
    gguf_formats = [fmt for fmt in EXPORT_FORMATS if fmt.startswith("gguf")]
    export.add_argument("--model", default="embedded",
                        help="the base model the adapter was trained on (default: embedded)")
    export.add_argument("--adapter", required=True, help="a run folder or adapter folder")
    export.add_argument("--format", choices=EXPORT_FORMATS, default=DEFAULT_EXPORT_FORMAT,
                        help="adapter: the LoRA adapter alone, a few MB; merged_16bit: the base model with the "
                             f"adapter merged in; {', '.join(gguf_formats)}: that merged model as one GGUF file "
                             f"(llama.cpp, Ollama) (default: {DEFAULT_EXPORT_FORMAT})")
    export.add_argument("--output", required=True, help="a new folder")
    export.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                        help="4-bit NF4 weights for the base model (default: on with CUDA, off on CPU)")
    return parser


# Each train/preview flag and the settings it sets. A flag given on the command line wins over the
# recipe (--config); one left out keeps the recipe's value, or the device's default.
FLAG_SETTINGS = {
    "model": [("model", "name")],
    "load_in_4bit": [("model", "load_in_4bit")],
    "backend": [("model", "backend")],
    "max_length": [("model", "max_length"), ("train", "max_length")],
    "dataset": [("data", "source")],
    "split": [("data", "split")],
    "columns": [("data", "columns")],
    "template": [("data", "template")],
    "system_prompt": [("data", "system_prompt")],
    "max_rows": [("data", "max_rows")],
    "holdout": [("data", "holdout_rows")],
    "max_steps": [("train", "max_steps")],
    "epochs": [("train", "epochs")],
    "batch_size": [("train", "micro_batch_size")],
    "grad_accum": [("train", "grad_accum_steps")],
    "lr": [("train", "learning_rate")],
    "warmup_steps": [("train", "warmup_steps")],
    "scheduler": [("train", "lr_scheduler")],
    "optimizer": [("train", "optimizer")],
    "weight_decay": [("train", "weight_decay")],
    "sampling": [("train", "sampling")],
    "precision": [("train", "precision")],
    "fp8": [("train", "fp8_matmuls")],
    "seed": [("train", "seed"), ("lora", "seed")],
    "eval_generate": [("train", "eval_generate")],
    "eval_max_new_tokens": [("train", "eval_max_new_tokens")],
    "save_steps": [("train", "save_steps")],
    "lora_r": [("lora", "r")],
    "lora_alpha": [("lora", "alpha")],
    "lora_dropout": [("lora", "dropout")],
    "target_modules": [("lora", "target_modules")],
    "rslora": [("lora", "use_rslora")],
    "gradient_checkpointing": [("lora", "gradient_checkpointing")],
}


def _settings(args):
    """The recipe (a --config file, else the device's defaults) with the flags given on top."""
    from finetune.models.backend import default_device
    from finetune.train.recipe import default_recipe, load_recipe, with_changes

    device = default_device()
    recipe = load_recipe(args.config, device) if args.config else default_recipe(device)
    changes: dict[str, dict] = {}
    for flag, targets in FLAG_SETTINGS.items():
        value = getattr(args, flag, None)
        if value is None:  # not on the command line
            continue
        if flag == "max_steps" and value == 0:
            value = None  # 0: train --epochs instead
        if flag == "holdout" and value == HOLDOUT_AUTO:
            value = None  # sized to the data
        for section, name in targets:
            changes.setdefault(section, {})[name] = value
    recipe = with_changes(recipe, changes, "command line")
    if args.command == "train":
        output = args.output or recipe.output
        if not output and not args.resume:
            raise ValueError("say where the run goes: --output FOLDER (or output: in the recipe)")
        recipe.output = output
    return recipe


def _print(obj: dict) -> None:
    from finetune.models.backend import is_main_process

    if is_main_process():  # under accelerate launch, one process per GPU: the first speaks for all
        print(json.dumps(obj), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import_unsloth_first()
    from finetune.quiet import quiet_libraries

    quiet_libraries()
    if args.command == "eval":
        return run_eval(args)
    if args.command == "export":
        return run_export(args)
    if args.command == "runs":
        return run_runs(args)
    if args.command == "push":
        return run_push(args)
    if args.command == "train" and args.resume:
        return run_resume(args)
    from finetune.data.prompts import tokenize_rows
    from finetune.data.sources import DatasetError, load_examples
    from finetune.models.load import ModelLoadError, load_model

    try:
        recipe = _settings(args)
        data = recipe.data
        # The data is read and checked before the model loads, so a bad file fails in a second.
        rows = load_examples(data.source, data.columns, data.split, data.max_rows)
        loaded = load_model(recipe.model)
        prepared = tokenize_rows(rows, data, loaded.tokenizer, recipe.model.max_length)
    except (DatasetError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if prepared.holdout and prepared.holdout.warning:  # e.g. a hold-out that leaves little to train on
        print(f"warning: {prepared.holdout.warning}", file=sys.stderr)
    if args.command == "preview":
        return run_preview(loaded, prepared, args.rows)
    from finetune.train.trainer import fp8_applies, start_training

    # What was loaded and what will be trained, for the person at the terminal (stdout stays JSON).
    print(f"model: {loaded.info.summary()}", file=sys.stderr)
    stats, train, lora = prepared.stats, recipe.train, recipe.lora
    print(
        f"data: {prepared.name}, {stats.rows} rows, {stats.truncated} truncated and {stats.dropped} dropped "
        f"at max length {stats.max_length}, template {prepared.template}, {len(prepared.heldout)} held out",
        file=sys.stderr,
    )
    print(
        f"recipe: micro-batch {train.micro_batch_size} x grad-accum {train.grad_accum_steps}, {train.sampling} "
        f"batches, {train.optimizer}, lr {train.learning_rate:g}, LoRA r{lora.r}, "
        f"checkpointing {'on' if lora.gradient_checkpointing else 'off'}, "
        f"FP8 base matmuls {'on' if fp8_applies(loaded, train) else 'off'}, backend {loaded.info.backend}",
        file=sys.stderr,
    )
    return _follow(lambda: start_training(loaded, prepared, train, lora, recipe.output, recipe))


def _follow(start) -> int:
    """Start a run, print each step's metrics as a JSON line, then the result; Ctrl-C stops it cleanly."""
    from finetune.runs import RunFolderError
    from finetune.train.job import TrainingBusy

    try:
        job = start()
    except (TrainingBusy, RunFolderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    already = len(job.metrics)  # a resumed run's steps before the checkpoint: printed by the earlier process
    try:
        for number, metrics in enumerate(job.follow()):
            if number >= already:
                _print(metrics)
    except KeyboardInterrupt:  # Ctrl-C: stop after this step, with a checkpoint, and keep what was learned
        job.stop()
        job.wait()
    job.thread.join(60)  # exiting while the run's thread is still inside torch would abort the process
    if job.status == "failed":
        _print({"status": "failed", "error": job.error})
        return 1
    _print(job.result)
    return 0


def run_preview(loaded, prepared, rows: int) -> int:
    from dataclasses import asdict

    from finetune.data.prompts import preview_row

    _print({"model": loaded.info.summary(), "columns": prepared.columns, "template": prepared.template,
            "stats": asdict(prepared.stats), "holdout": asdict(prepared.holdout) if prepared.holdout else None})
    for row in prepared.rows[:rows]:
        _print({"segments": [{"text": text, "trained": trained}
                             for text, trained in preview_row(loaded.tokenizer, row)]})
    return 0


def run_resume(args) -> int:
    """`train --resume RUN`: the run's own model, rows and settings, from its last checkpoint."""
    from pathlib import Path

    from finetune.config import ModelSettings
    from finetune.models.load import ModelLoadError, load_model
    from finetune.runs import RunFolderError, last_checkpoint, mark_abandoned_runs, read_record
    from finetune.train.trainer import resume_training

    run_dir = Path(args.resume)
    try:
        mark_abandoned_runs(run_dir.parent)
        record = read_record(run_dir)
        model = record.get("model", {})
        loaded = load_model(ModelSettings(model.get("name", "embedded"), args.load_in_4bit,
                                          record.get("train", {}).get("max_length", 2048)))
    except (RunFolderError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checkpoint = last_checkpoint(run_dir)
    print(f"resume: {run_dir.name} ({record.get('status')}) from {checkpoint.name if checkpoint else 'nothing'}, "
          f"model {loaded.info.summary()}", file=sys.stderr)
    return _follow(lambda: resume_training(loaded, run_dir))


def run_push(args) -> int:
    """`python -m finetune push`: the token only from HF_TOKEN, never a flag (shell history, process lists)."""
    from finetune.hub import PushError, push_folder

    try:
        url = push_folder(args.folder, args.repo, private=not args.public)
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print({"pushed": args.folder, "url": url})
    return 0


def run_runs(args) -> int:
    """`python -m finetune runs`: one JSON line per run, newest first, after marking interrupted ones."""
    from finetune.runs import list_runs, mark_abandoned_runs

    for name in mark_abandoned_runs(args.runs_dir):
        print(f"marked incomplete: {name} (its process is gone)", file=sys.stderr)
    for run in list_runs(args.runs_dir):
        _print({"name": run.name, "status": run.status, "step": run.step, "total_steps": run.total_steps,
                "resumable_from": run.checkpoint_step if run.resumable else None})
    return 0


def run_eval(args) -> int:
    """`python -m finetune eval`: print the progress to stderr and, last, one JSON object on stdout."""
    from pathlib import Path

    from finetune.config import ModelSettings
    from finetune.data.sources import MCQ_FILE, REAL_ROWS, SAMPLE_FILE, DatasetError
    from finetune.evaluate.heldout import EvalSettings, evaluate, load_eval_items
    from finetune.models.adapters import load_adapter, read_run_template
    from finetune.models.backend import default_device
    from finetune.models.load import ModelLoadError, load_model

    source = args.dataset or _default_eval_source(args.adapter)
    source = {"sample-mcq": str(MCQ_FILE), "sample": str(SAMPLE_FILE), "real": str(REAL_ROWS)}.get(source, source)
    try:
        given = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        settings = EvalSettings.for_device(default_device(), **{k: v for k, v in given.items() if v is not None},
                                           limit=args.limit, batch_size=args.batch_size, max_length=args.max_length,
                                           seed=args.seed, template=args.template or (
                                               read_run_template(args.adapter) if args.adapter else "chat"))
        items = load_eval_items(source, args.columns, args.limit)
        loaded = load_model(ModelSettings(args.model, args.load_in_4bit, args.max_length))
        if args.adapter:
            load_adapter(loaded, args.adapter)
    except (DatasetError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"eval: {len(items)} rows from {Path(source).name}, model {loaded.info.summary()}", file=sys.stderr)

    def progress(model: str, done: int, total: int) -> None:
        print(f"{model}: {done}/{total} answered", file=sys.stderr, flush=True)

    report = evaluate(loaded, items, settings, on_progress=progress)
    _print(report.metrics)
    return 0


def run_export(args) -> int:
    """`python -m finetune export`: one JSON line with the folder written."""
    from finetune.config import ModelSettings
    from finetune.export.save import ExportError, export_model
    from finetune.models.adapters import load_adapter
    from finetune.models.load import ModelLoadError, load_model

    try:
        loaded = load_model(ModelSettings(args.model, args.load_in_4bit))
        load_adapter(loaded, args.adapter)
        folder = export_model(loaded, args.output, args.format, run_dir=args.adapter)
    except (ExportError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print({"format": args.format, "output": str(folder)})
    return 0


def _default_eval_source(adapter: str | None) -> str:
    """The run's own held-out rows when the adapter's run kept some, else the bundled multiple-choice file."""
    from finetune.models.adapters import run_folder

    folder = run_folder(adapter) if adapter else None
    return str(folder / "heldout.jsonl") if folder and (folder / "heldout.jsonl").is_file() else "sample-mcq"


if __name__ == "__main__":
    sys.exit(main())
