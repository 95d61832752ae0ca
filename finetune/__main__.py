"""Command line: train a LoRA adapter, preview what would be trained, or evaluate base vs fine-tuned.

    python -m finetune train --model embedded --dataset sample --holdout 8 --output runs/demo
    python -m finetune preview --model embedded --dataset data.jsonl --rows 2
    python -m finetune eval --model embedded --adapter runs/demo --limit 8
    python -m finetune export --adapter runs/demo --format merged_16bit --output runs/demo-merged

`train` prints one JSON object per step, then a final one with status, steps, loss_first,
loss_last, adapter (and eval, with --holdout). `eval` prints one JSON object last:
{"base": {...}, "finetuned": {...}}. Bad input: exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from finetune.backend import import_unsloth_first


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def _key_values(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected role=column pairs like question=Q,answer=A, got {text!r}")
    return dict(pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m finetune", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for name in ("train", "preview"):
        cmd = commands.add_parser(name)
        cmd.add_argument("--model", default="embedded", help="'embedded', a Hub repo id or a local folder")
        cmd.add_argument("--dataset", default="sample", help="'sample', 'medical-o1', 'medical-o1-zh' or a file")
        cmd.add_argument("--split", default="train[0:500]", help="slice of a Hub dataset")
        cmd.add_argument("--columns", type=_key_values, default={}, help="override mapping: question=Q,answer=A")
        cmd.add_argument("--template", choices=("chat", "plain"), default="chat")
        cmd.add_argument("--system-prompt", default="")
        cmd.add_argument("--max-rows", type=int, default=None)
        cmd.add_argument("--max-length", type=int, default=None, help="token limit per row (device default)")
        cmd.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
        cmd.add_argument("--backend", choices=("auto", "unsloth", "hf"), default="auto")
    train = commands.choices["train"]
    train.add_argument("--output", required=True, help="run folder: adapter/, run.json")
    train.add_argument("--max-steps", type=int, default=None, help="device default; 0 trains --epochs instead")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--batch-size", type=int, default=None, help="micro-batch size")
    train.add_argument("--grad-accum", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--warmup-steps", type=int, default=None)
    train.add_argument("--scheduler", choices=("linear", "cosine", "constant"), default=None)
    train.add_argument("--optimizer", default=None, help="e.g. adamw_8bit, adamw_torch")
    train.add_argument("--weight-decay", type=float, default=None)
    train.add_argument("--sampling", choices=("random", "group_by_length"), default=None,
                       help="batch order; default group_by_length (similar lengths together)")
    train.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    train.add_argument("--seed", type=int, default=3407)
    train.add_argument("--lora-r", type=int, default=16)
    train.add_argument("--lora-alpha", type=int, default=16)
    train.add_argument("--lora-dropout", type=float, default=0.0)
    train.add_argument("--target-modules", default=None, help="comma-separated; default all 7 projections")
    train.add_argument("--rslora", action="store_true")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    train.add_argument("--holdout", type=int, default=0,
                       help="rows kept out of training and evaluated on at the end, base vs fine-tuned")
    train.add_argument("--eval-generate", action=argparse.BooleanOptionalAction, default=True,
                       help="with --holdout: generate answers too (format, accuracy), not only the loss")
    train.add_argument("--eval-max-new-tokens", type=int, default=512)
    commands.choices["preview"].add_argument("--rows", type=int, default=2)
    evaluate = commands.add_parser("eval", help="base vs fine-tuned on held-out rows; one JSON object last")
    evaluate.add_argument("--model", default="embedded", help="'embedded', a Hub repo id or a local folder")
    evaluate.add_argument("--adapter", default=None, help="a run folder or adapter folder: adds 'finetuned'")
    evaluate.add_argument("--dataset", default=None,
                          help="'sample-mcq', 'sample', a file, or default: the run's heldout.jsonl (else sample-mcq)")
    evaluate.add_argument("--columns", type=_key_values, default={}, help="override mapping: question=Q,answer=A")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N rows")
    evaluate.add_argument("--template", choices=("chat", "plain"), default=None, help="default: the adapter's")
    evaluate.add_argument("--max-new-tokens", type=int, default=512)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--temperature", type=float, default=0.6, help="0: greedy (R1 advice: 0.6)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-length", type=int, default=2048)
    evaluate.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    export = commands.add_parser("export", help="the adapter or a merged 16-bit model, written atomically")
    export.add_argument("--model", default="embedded", help="the base model the adapter was trained on")
    export.add_argument("--adapter", required=True, help="a run folder or adapter folder")
    export.add_argument("--format", choices=("adapter", "merged_16bit"), default="merged_16bit")
    export.add_argument("--output", required=True, help="a new folder")
    export.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    return parser


def _settings(args):
    """Typed settings from the flags, on top of the device's defaults."""
    from finetune.backend import default_device
    from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings, lora_for_device

    device = default_device()
    train = TrainSettings.for_device(device)
    max_length = args.max_length or train.max_length
    model = ModelSettings(args.model, args.load_in_4bit, max_length, args.backend)
    data = DataSettings(args.dataset, args.split, args.template, args.columns, args.system_prompt, args.max_rows,
                        holdout_rows=getattr(args, "holdout", 0))
    if args.command == "preview":
        return model, data, None, None
    overrides = {
        "micro_batch_size": args.batch_size,
        "grad_accum_steps": args.grad_accum,
        "learning_rate": args.lr,
        "warmup_steps": args.warmup_steps,
        "lr_scheduler": args.scheduler,
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay,
        "sampling": args.sampling,
    }
    fields = {**train.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    fields.update(max_length=max_length, precision=args.precision, seed=args.seed, epochs=args.epochs,
                  eval_generate=args.eval_generate, eval_max_new_tokens=args.eval_max_new_tokens)
    if args.max_steps is not None:
        fields["max_steps"] = args.max_steps or None
    lora = lora_for_device(device)
    lora = LoraSettings(
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=tuple(args.target_modules.split(",")) if args.target_modules else lora.target_modules,
        use_rslora=args.rslora,
        gradient_checkpointing=lora.gradient_checkpointing
        if args.gradient_checkpointing is None
        else args.gradient_checkpointing,
        seed=args.seed,
    )
    return model, data, TrainSettings(**fields), lora


def _print(obj: dict) -> None:
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
    from finetune.data import DatasetError, load_examples
    from finetune.formats import preview_row, tokenize_rows
    from finetune.job import TrainingBusy
    from finetune.models import ModelLoadError, load_model

    try:
        model_settings, data, train, lora = _settings(args)
        # The data is read and checked before the model loads, so a bad file fails in a second.
        rows = load_examples(data.source, data.columns, data.split, data.max_rows)
        loaded = load_model(model_settings)
        prepared = tokenize_rows(rows, data, loaded.tokenizer, model_settings.max_length)
    except (DatasetError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "preview":
        from dataclasses import asdict

        _print(
            {
                "model": loaded.info.summary(),
                "columns": prepared.columns,
                "template": prepared.template,
                "stats": asdict(prepared.stats),
            }
        )
        for row in prepared.rows[: args.rows]:
            _print(
                {
                    "segments": [
                        {"text": text, "trained": trained} for text, trained in preview_row(loaded.tokenizer, row)
                    ]
                }
            )
        return 0

    from finetune.train import start_training

    # What was loaded and what will be trained, for the person at the terminal (stdout stays JSON).
    print(f"model: {loaded.info.summary()}", file=sys.stderr)
    stats = prepared.stats
    print(
        f"data: {prepared.name}, {stats.rows} rows, {stats.truncated} truncated and {stats.dropped} dropped "
        f"at max length {stats.max_length}, template {prepared.template}, {len(prepared.heldout)} held out",
        file=sys.stderr,
    )

    print(
        f"recipe: micro-batch {train.micro_batch_size} x grad-accum {train.grad_accum_steps}, {train.sampling} "
        f"batches, {train.optimizer}, lr {train.learning_rate:g}, LoRA r{lora.r}, "
        f"checkpointing {'on' if lora.gradient_checkpointing else 'off'}, backend {loaded.info.backend}",
        file=sys.stderr,
    )
    try:
        job = start_training(loaded, prepared, train, lora, args.output)
    except (TrainingBusy, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        for metrics in job.follow():
            _print(metrics)
    except KeyboardInterrupt:  # Ctrl-C: stop after this step and keep what was learned
        job.stop()
        job.wait()
    if job.status == "failed":
        _print({"status": "failed", "error": job.error})
        return 1
    _print(job.result)
    return 0


def run_eval(args) -> int:
    """`python -m finetune eval`: print the progress to stderr and, last, one JSON object on stdout."""
    from pathlib import Path

    from finetune.adapters import load_adapter, read_run_template
    from finetune.config import ModelSettings
    from finetune.data import MCQ_FILE, SAMPLE_FILE, DatasetError
    from finetune.evaluate import EvalSettings, evaluate, load_eval_items
    from finetune.models import ModelLoadError, load_model

    source = args.dataset or _default_eval_source(args.adapter)
    source = {"sample-mcq": str(MCQ_FILE), "sample": str(SAMPLE_FILE)}.get(source, source)
    try:
        settings = EvalSettings(limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                max_length=args.max_length, temperature=args.temperature, seed=args.seed,
                                template=args.template or (read_run_template(args.adapter) if args.adapter else "chat"))
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
    from finetune.adapters import load_adapter
    from finetune.config import ModelSettings
    from finetune.export import ExportError, export_model
    from finetune.models import ModelLoadError, load_model

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
    from finetune.adapters import run_folder

    folder = run_folder(adapter) if adapter else None
    return str(folder / "heldout.jsonl") if folder and (folder / "heldout.jsonl").is_file() else "sample-mcq"


if __name__ == "__main__":
    sys.exit(main())
