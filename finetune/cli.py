"""The command line: train a LoRA adapter, preview what would be trained, evaluate base vs fine-tuned,
chat, export, push to the Hub, list the runs.

    python -m finetune train --model embedded --dataset sample --holdout 8 --output runs/demo
    python -m finetune preview --model embedded --dataset data.jsonl --rows 2
    python -m finetune eval --model embedded --adapter runs/demo --limit 8
    python -m finetune chat --adapter runs/demo --compare "What is the first-line treatment of anaphylaxis?"
    python -m finetune export --adapter runs/demo --output runs/demo-adapter      # the adapter (default)
    python -m finetune export --adapter runs/demo --format gguf_q4_k_m --output runs/demo-gguf
    python -m finetune train --config recipes/embedded-cpu-demo.yaml
    python -m finetune train --resume runs/demo
    python -m finetune runs
    HF_TOKEN=... python -m finetune push runs/demo-merged --repo your-name/r1-medical

`train` prints one JSON object per step, then a final one with status, steps, loss_first,
loss_last, adapter (and eval, when rows are held out: --holdout, automatic by default). `eval`
prints one JSON object last: {"base": {...}, "finetuned": {...}}. `chat --json` prints one with the
thinking and the answer. Bad input: exit status 2 and one line on stderr. Outputs are not medical advice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune.cli_flags import DEVICES, Section, add_settings, given, key_values
from finetune.config import DEFAULT_EXPORT_FORMAT, EXPORT_FORMATS, ModelSettings
from finetune.data.prompts import preview_row, tokenize_rows
from finetune.data.sources import MCQ_FILE, REAL_ROWS, SAMPLE_FILE, DatasetError, load_examples
from finetune.hub import PushError, push_folder
from finetune.models.backend import default_device, import_unsloth_first, is_main_process
from finetune.quiet import quiet_libraries
from finetune.runs import (
    RunFolder,
    RunFolderError,
    last_checkpoint,
    list_runs,
    mark_abandoned_runs,
    read_record,
    read_run_template,
    run_folder,
    run_max_length,
)
from finetune.train.job import TrainingBusy
from finetune.train.recipe import SECTIONS, Recipe, default_recipe, load_recipe, with_changes


@dataclass(frozen=True)
class Command:
    description: str
    add_flags: Callable[[argparse.ArgumentParser, list[Section]], None]
    """Adds the command's own flags and, among them, one for each field of its `sections`."""
    run: Callable[[argparse.Namespace], int]
    sections: Callable[[], list[Section]] = list
    """The settings objects the command builds (see finetune/cli_flags.py)."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The command line; with `commands`, only those commands get their flags (eval's and chat's settings
    classes import torch, which `python -m finetune train --help` has no need of)."""
    parser = _OneLineParser(prog="python -m finetune", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.description, description=command.description)
        if commands is None or name in commands:
            command.add_flags(sub, command.sections())
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[:1]).parse_args(argv)
    import_unsloth_first()
    quiet_libraries()
    return COMMANDS[args.command].run(args)


# The settings each command builds, on each device: what --help states as the defaults, and what the
# command starts from before the flags given are put on top.

def recipe_sections(names=tuple(SECTIONS)) -> list[Section]:
    """train and preview: the device's recipe (`default_recipe`), which --config replaces."""
    recipes = {device: default_recipe(device) for device in DEVICES}
    return [Section(name, {device: getattr(recipe, name) for device, recipe in recipes.items()}) for name in names]


def eval_sections() -> list[Section]:
    from finetune.evaluate.heldout import EvalSettings  # imports torch: only for eval's flags

    evals = {device: EvalSettings.for_device(device) for device in DEVICES}
    models = {device: ModelSettings(max_length=settings.max_length) for device, settings in evals.items()}
    return [Section("model", models), Section("eval", evals)]  # --max-length sets both


def chat_sections() -> list[Section]:
    from finetune.generate.reply import GenerationSettings  # imports torch: only for chat's flags

    return [Section("model", dict.fromkeys(DEVICES, ModelSettings())),
            Section("generation", {device: GenerationSettings.for_device(device) for device in DEVICES})]


def model_sections() -> list[Section]:
    return [Section("model", dict.fromkeys(DEVICES, ModelSettings()))]


def settings_from_args(sections: list[Section], args, **resolved: dict) -> dict[str, object]:
    """Each section's settings on this device, with what the command resolved (e.g. the adapter's template)
    and then the flags given on top; ValueError for a setting out of its range."""
    device, flags = default_device(), given(args)
    return {section.name: dataclasses.replace(section.defaults[device],
                                              **{**resolved.get(section.name, {}), **flags.get(section.name, {})})
            for section in sections}


def recipe_from_args(args) -> Recipe:
    """The recipe (a --config file, else the device's defaults) with the flags given on top: a flag written
    out wins, even where it says what the default says (--holdout 0 over a recipe's holdout_rows: 8)."""
    device = default_device()
    recipe = load_recipe(args.config, device) if args.config else default_recipe(device)
    recipe = with_changes(recipe, given(args), "command line")
    if args.command == "train":
        output = args.output or recipe.output
        if not output and not args.resume:
            raise ValueError("say where the run goes: --output FOLDER (or output: in the recipe)")
        recipe.output = output
    return recipe


def _add_recipe_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="a recipe file (YAML, see recipes/); flags given win (default: the device's recipe)")


def _train_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    _add_recipe_flag(parser)
    add_settings(parser, sections)
    parser.add_argument("--output", help="run folder: adapter/, run.json (default: output: in the recipe; one is "
                                         "needed)")
    parser.add_argument("--resume", default=None, metavar="RUN_FOLDER",
                        help="continue a stopped or interrupted run from its last checkpoint, with its own settings "
                             "(default: a new run)")


def _preview_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    _add_recipe_flag(parser)
    add_settings(parser, sections)
    parser.add_argument("--rows", type=int, default=2, help="rows whose exact training text is printed (default: 2)")


def _adapter_flag(parser: argparse.ArgumentParser, effect: str) -> None:
    parser.add_argument("--adapter", default=None,
                        help=f"a run folder or adapter folder: {effect} (default: none, the base model only)")


def _eval_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    _adapter_flag(parser, "adds 'finetuned'")
    parser.add_argument("--dataset", default=None,
                        help="'real' (medical-o1 rows in ../shared/data, never trained on), 'sample-mcq', "
                             "'sample', or a file (default: the run's heldout.jsonl, else sample-mcq)")
    parser.add_argument("--columns", type=key_values, default={},
                        help="override mapping: question=Q,answer=A (default: detected from the column names)")
    add_settings(parser, sections)


def _chat_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    parser.add_argument("question")
    _adapter_flag(parser, "chat with the fine-tuned model")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with thinking and answer (default: stream to the terminal)")
    parser.add_argument("--compare", action="store_true",
                        help="with --adapter: answer with the base model, then the fine-tuned (default: off)")
    add_settings(parser, sections)


def _export_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    gguf_formats = [fmt for fmt in EXPORT_FORMATS if fmt.startswith("gguf")]
    parser.add_argument("--adapter", required=True, help="a run folder or adapter folder")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=DEFAULT_EXPORT_FORMAT,
                        help="adapter: the LoRA adapter alone, a few MB; merged_16bit: the base model with the "
                             f"adapter merged in; {', '.join(gguf_formats)}: that merged model as one GGUF file "
                             f"(llama.cpp, Ollama) (default: {DEFAULT_EXPORT_FORMAT})")
    parser.add_argument("--output", required=True, help="a new folder")
    add_settings(parser, sections)  # the base model the adapter was trained on


def _push_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    parser.add_argument("folder", help="an export folder (adapter, merged model or GGUF, with its model card)")
    parser.add_argument("--repo", required=True, help="owner/name of the model repo (created if missing)")
    parser.add_argument("--public", action="store_true", help="create the repo public (default: private)")


def _runs_flags(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    parser.add_argument("--runs-dir", default="runs", help="the folder of runs (default: runs)")


def _print(obj: dict) -> None:
    if is_main_process():  # under accelerate launch, one process per GPU: the first speaks for all
        print(json.dumps(obj), flush=True)


def _refuse(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _prepared_run(args):
    """train and preview: (recipe, loaded model, tokenized rows), or None after one line on stderr."""
    from finetune.models.load import ModelLoadError, load_model  # imports torch

    try:
        recipe = recipe_from_args(args)
        data = recipe.data
        # The data is read and checked before the model loads, so a bad file fails in a second.
        rows = load_examples(data.source, data.columns, data.split, data.max_rows)
        loaded = load_model(recipe.model)
        prepared = tokenize_rows(rows, data, loaded.tokenizer, recipe.model.max_length)
    except (DatasetError, ModelLoadError, ValueError) as err:
        _refuse(err)
        return None
    if prepared.holdout and prepared.holdout.warning:  # e.g. a hold-out that leaves little to train on
        print(f"warning: {prepared.holdout.warning}", file=sys.stderr)
    return recipe, loaded, prepared


def run_train(args) -> int:
    if args.resume:
        return run_resume(args)
    ready = _prepared_run(args)
    if ready is None:
        return 2
    recipe, loaded, prepared = ready
    from finetune.train.trainer import fp8_applies, start_training  # imports transformers and TRL

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
    return _follow(lambda: start_training(loaded, prepared, recipe))


def _follow(start) -> int:
    """Start a run, print each step's metrics as a JSON line, then the result; Ctrl-C stops it cleanly."""
    try:
        job = start()
    except (TrainingBusy, RunFolderError, ValueError) as err:
        return _refuse(err)
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


def run_preview(args) -> int:
    ready = _prepared_run(args)
    if ready is None:
        return 2
    _, loaded, prepared = ready
    _print({"model": loaded.info.summary(), "columns": prepared.columns, "template": prepared.template,
            "stats": dataclasses.asdict(prepared.stats),
            "holdout": dataclasses.asdict(prepared.holdout) if prepared.holdout else None})
    for row in prepared.rows[:args.rows]:
        _print({"segments": [{"text": text, "trained": trained}
                             for text, trained in preview_row(loaded.tokenizer, row)]})
    return 0


def run_resume(args) -> int:
    """`train --resume RUN`: the run's own model, rows and settings, from its last checkpoint; of the flags,
    only the model's (e.g. --no-load-in-4bit) apply."""
    from finetune.models.load import ModelLoadError, load_model  # imports torch
    from finetune.train.trainer import resume_training  # imports transformers and TRL

    run_dir = Path(args.resume)
    try:
        mark_abandoned_runs(run_dir.parent)
        record = read_record(run_dir)
        trained = {"name": record.get("model", {}).get("name", "embedded"),
                   "max_length": run_max_length(record) or ModelSettings().max_length}
        loaded = load_model(ModelSettings(**{**trained, **given(args).get("model", {})}))
    except (RunFolderError, ModelLoadError, ValueError) as err:
        return _refuse(err)
    checkpoint = last_checkpoint(run_dir)
    print(f"resume: {run_dir.name} ({record.get('status')}) from {checkpoint.name if checkpoint else 'nothing'}, "
          f"model {loaded.info.summary()}", file=sys.stderr)
    return _follow(lambda: resume_training(loaded, run_dir))


EVAL_PRESETS = {"sample-mcq": str(MCQ_FILE), "sample": str(SAMPLE_FILE), "real": str(REAL_ROWS)}


def run_eval(args) -> int:
    """Progress on stderr and, last, one JSON object on stdout."""
    from finetune.evaluate.heldout import evaluate, load_eval_items  # imports torch
    from finetune.models.adapters import load_adapter  # imports torch
    from finetune.models.load import ModelLoadError, load_model  # imports torch

    source = args.dataset or _default_eval_source(args.adapter)
    source = EVAL_PRESETS.get(source, source)
    try:
        settings = settings_from_args(eval_sections(), args, eval={"template": _adapter_template(args.adapter)})
        items = load_eval_items(source, args.columns, settings["eval"].limit)
        loaded = load_model(settings["model"])
        if args.adapter:
            load_adapter(loaded, args.adapter)
    except (DatasetError, ModelLoadError, FileNotFoundError, ValueError) as err:
        return _refuse(err)
    print(f"eval: {len(items)} rows from {Path(source).name}, model {loaded.info.summary()}", file=sys.stderr)

    def progress(model: str, done: int, total: int) -> None:
        print(f"{model}: {done}/{total} answered", file=sys.stderr, flush=True)

    report = evaluate(loaded, items, settings["eval"], on_progress=progress)
    _print(report.metrics)
    return 0


def _default_eval_source(adapter: str | None) -> str:
    """The run's own held-out rows when the adapter's run kept some, else the bundled multiple-choice file."""
    folder = run_folder(adapter) if adapter else None
    heldout = RunFolder(folder).heldout if folder else None
    return str(heldout) if heldout and heldout.is_file() else "sample-mcq"


def _adapter_template(adapter: str | None) -> str:
    """How the adapter's run prompted its rows, so questions are asked the same way; chat without one."""
    return read_run_template(adapter) if adapter else "chat"


def run_chat(args) -> int:
    """Stream the reply to the terminal, the thinking apart from the answer, or print it as one JSON object."""
    from finetune.generate.reply import ContextTooLong, stream_reply  # imports torch
    from finetune.models.adapters import load_adapter  # imports torch
    from finetune.models.load import ModelLoadError, load_model  # imports torch

    try:
        settings = settings_from_args(chat_sections(), args,
                                      generation={"template": _adapter_template(args.adapter)})
        loaded = load_model(settings["model"])
        if args.adapter:
            load_adapter(loaded, args.adapter)
    except (ModelLoadError, FileNotFoundError, ValueError) as err:
        return _refuse(err)
    runs = [("base", False), ("fine-tuned", True)] if args.compare and args.adapter else [(None, True)]
    results = {}
    for label, use_adapter in runs:
        replies = stream_reply(loaded, args.question, settings["generation"], use_adapter=use_adapter)
        try:
            if args.json:
                *_, final = replies
            else:
                if label:
                    print(f"=== {label} ===", flush=True)
                final = _stream_to_terminal(replies)
        except ContextTooLong as err:
            return _refuse(err)
        results[label or "reply"] = {
            "thinking": final.thinking,
            "answer": final.answer,
            "thinking_closed": final.thinking_done,
            "tokens": final.tokens,
            "seconds": final.seconds,
            "decoder": final.decoder,
        }
        if not args.json:
            print(f"({final.tokens} tokens in {final.seconds:.1f} s, {final.decoder})", file=sys.stderr)
    if args.json:
        print(json.dumps(results["reply"] if len(results) == 1 else results, ensure_ascii=False))
    return 0


def _stream_to_terminal(replies) -> object:
    """Print thinking, then the answer, as they grow; return the final reply."""
    shown_thinking = shown_answer = 0
    final = None
    for reply in replies:
        if len(reply.thinking) > shown_thinking:
            if shown_thinking == 0:
                print("[thinking]", flush=True)
            print(reply.thinking[shown_thinking:], end="", flush=True)
            shown_thinking = len(reply.thinking)
        if len(reply.answer) > shown_answer:
            if shown_answer == 0:
                print("\n[answer]" if shown_thinking else "[answer]", flush=True)
            print(reply.answer[shown_answer:], end="", flush=True)
            shown_answer = len(reply.answer)
        final = reply
    print(flush=True)
    return final


def run_export(args) -> int:
    """One JSON line with the folder written."""
    from finetune.export.save import ExportError, export_model  # imports torch
    from finetune.models.adapters import load_adapter  # imports torch
    from finetune.models.load import ModelLoadError, load_model  # imports torch

    try:
        loaded = load_model(settings_from_args(model_sections(), args)["model"])
        load_adapter(loaded, args.adapter)
        folder = export_model(loaded, args.output, args.format, run_dir=args.adapter)
    except (ExportError, ModelLoadError, FileNotFoundError, ValueError) as err:
        return _refuse(err)
    _print({"format": args.format, "output": str(folder)})
    return 0


def run_push(args) -> int:
    """The token only from HF_TOKEN, never a flag (shell history, process lists)."""
    try:
        url = push_folder(args.folder, args.repo, private=not args.public)
    except PushError as err:
        return _refuse(err)
    _print({"pushed": args.folder, "url": url})
    return 0


def run_runs(args) -> int:
    """One JSON line per run, newest first, after marking interrupted ones."""
    for name in mark_abandoned_runs(args.runs_dir):
        print(f"marked incomplete: {name} (its process is gone)", file=sys.stderr)
    for run in list_runs(args.runs_dir):
        _print({"name": run.name, "status": run.status, "step": run.step, "total_steps": run.total_steps,
                "resumable_from": run.checkpoint_step if run.resumable else None})
    return 0


COMMANDS = {
    "train": Command("Fine-tune a LoRA adapter on a chain-of-thought dataset: one JSON line per step, then the "
                     "result (with the base vs fine-tuned evaluation on the held-out rows).",
                     _train_flags, run_train, recipe_sections),
    "preview": Command("What a run would train on, nothing trained: the column mapping, the hold-out, the token "
                       "lengths and the exact training text of the first rows, as JSON lines.",
                       _preview_flags, run_preview, lambda: recipe_sections(("model", "data"))),
    "eval": Command("Base vs fine-tuned on held-out rows or a question file: progress on stderr, one JSON object "
                    "last.", _eval_flags, run_eval, eval_sections),
    "chat": Command("Ask a question: the reply streams to the terminal, its thinking apart from its answer "
                    "(--json: one JSON object); --compare answers with the base model, then the fine-tuned.",
                    _chat_flags, run_chat, chat_sections),
    "export": Command("Write what a run trained, atomically: the LoRA adapter, a merged 16-bit model, or one GGUF "
                      "file.", _export_flags, run_export, model_sections),
    "push": Command("Upload an export folder to the Hub; the token comes from HF_TOKEN, never a flag.",
                    _push_flags, run_push),
    "runs": Command("The runs in a folder and their status, one JSON line each; marks interrupted ones incomplete.",
                    _runs_flags, run_runs),
}
