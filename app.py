"""The browser app: load a model, pick data, train with a live dashboard, chat base vs fine-tuned.

    python app.py                   # http://127.0.0.1:7860, nothing loaded until you press Load
    python app.py --preload embedded --host 0.0.0.0

UI only. Each event calls one engine function (finetune/, inference/) and turns its result or its
error message into components. Shared state (the model, the training run) lives in one
`Workspace`; each visitor's own state (their dataset choice, their chat) in Gradio session state.
"""

from __future__ import annotations

import argparse
import html
import shutil
import threading
from dataclasses import replace
from pathlib import Path

from finetune.models.backend import default_device, import_unsloth_first
from finetune.quiet import drop_library_advisories

import_unsloth_first()  # before transformers is imported (a no-op without CUDA)
drop_library_advisories()  # before PEFT's first import: a chat or export puts an adapter on without training

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from finetune.bounds import Range, range_of  # noqa: E402
from finetune.config import (  # noqa: E402
    DEFAULT_EXPORT_FORMAT,
    OPTIMIZERS,
    SCHEDULERS,
    TEMPLATE_LABELS,
    DataSettings,
    LoraSettings,
    ModelSettings,
    TrainSettings,
    lora_for_device,
)
from finetune.data.prompts import suggested_template  # noqa: E402
from finetune.data.sources import (  # noqa: E402
    HOLDOUT_CAP,
    HOLDOUT_FLOOR,
    HOLDOUT_SHARE,
    ROLES,
    SAMPLE_FILE,
    DatasetError,
)
from finetune.evaluate.heldout import EvalSettings  # noqa: E402
from finetune.export.save import ExportError  # noqa: E402
from finetune.generate.chat import conversation, status_line  # noqa: E402
from finetune.generate.reply import GenerationSettings, ModelBusy  # noqa: E402
from finetune.hub import PushError  # noqa: E402
from finetune.models.load import PRESETS, ModelLoadError  # noqa: E402
from finetune.train.job import TrainingBusy  # noqa: E402
from ui import operator_settings as app_settings  # noqa: E402
from ui.dashboard import (  # noqa: E402
    log_lines,
    loss_rows,
    optimizer_rows,
    progress_fraction,
    progress_line,
)
from ui.eval_view import (  # noqa: E402
    TITLES,
    heldout_caption,
    metrics_headers,
    metrics_rows,
    published_markdown,
    question_detail,
    question_headers,
    question_rows,
)
from ui.fields import (  # noqa: E402
    chat_pane,
    checkbox_field,
    dropdown_field,
    number_field,
    radio_field,
    slider_field,
    text_field,
)
from ui.operator_settings import AppSettings, SettingsError, settings_from_env  # noqa: E402
from ui.preview import preview_dataset, read_dataset  # noqa: E402
from ui.workspace import Workspace, WorkspaceError  # noqa: E402

TITLE = "Chain-of-thought fine-tuning"
DISCLAIMER = (
    "⚠️ **Not medical advice.** This is a research and teaching tool. Answers come from a language model "
    "that can be wrong, and the bundled clinical examples are illustrative, not reviewed by clinicians. "
    "Never use an output to diagnose or treat a patient."
)
EXAMPLE_QUESTIONS = [
    "A 24-year-old has fever, neck stiffness and a petechial rash. What is the next step?",
    "A 67-year-old on warfarin has an INR of 9 and no bleeding. How should this be managed?",
    "A 30-year-old woman has palpitations, weight loss, heat intolerance and a diffuse goitre. What is the likely "
    "diagnosis?",
    "A 55-year-old smoker has crushing chest pain for 40 minutes and ST elevation in II, III and aVF. Which artery "
    "is most likely occluded?",
]
SOURCES = [
    (f"Bundled sample: {len(SAMPLE_FILE.read_text(encoding='utf-8').splitlines())} clinical vignettes", "sample"),
    ("medical-o1-reasoning-SFT, English (Hub)", "medical-o1"),
    ("medical-o1-reasoning-SFT, Chinese (Hub)", "medical-o1-zh"),
    ("Upload a file", "upload"),
]
TEMPLATES = [(label, value) for value, label in TEMPLATE_LABELS.items()]
PROMPT_TEMPLATES = [("Same as training", "auto"), *TEMPLATES]  # chat and evaluation: "auto" prompts as trained
CHAT_MODES = {"Base vs fine-tuned": ("base", "tuned"), "Fine-tuned only": ("tuned",), "Base only": ("base",)}
NONE = "(none)"
LOG_LINES = 12
QUESTION_HEADERS = ["#", "Question", "Gold", *TITLES.values()]  # before a run; a report brings its own
CSS = """
.progress-track {height: 14px; background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
  border-radius: 7px; overflow: hidden}
.progress-fill {height: 100%; background: var(--color-accent)}
/* An R1 model reasons for thousands of tokens: its bubble scrolls within a bounded height (following the
   end while it streams), so the answer below it stays in view. */
#chat-base .thought-group > .content, #chat-tuned .thought-group > .content {max-height: min(18em, 35vh);
  overflow-y: auto; overscroll-behavior: contain}
"""
# Errors a visitor can cause or fix: shown as a message, never as a traceback.
VISITOR_ERRORS = (DatasetError, ModelLoadError, WorkspaceError, TrainingBusy, ModelBusy, ExportError, PushError,
                  ValueError)
EXPORT_CHOICES = {
    "adapter": "LoRA adapter (small; needs the base model)",
    "merged_16bit": "Merged 16-bit model (plain transformers)",
    "gguf_q8_0": "GGUF q8_0 (llama.cpp, Ollama)",
    "gguf_q4_k_m": "GGUF q4_k_m (smallest)",
    "gguf_f16": "GGUF f16",
}


def build_app(workspace: Workspace, device: str, settings: AppSettings | None = None) -> gr.Blocks:
    settings = settings or AppSettings()
    limits = workspace.text_limits
    train = TrainSettings.for_device(device)
    lora = lora_for_device(device)
    model_max_length = train.max_length
    chat_defaults = GenerationSettings.for_device(device)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nLoad a reasoning model, fine-tune it with LoRA on chain-of-thought data, and "
                    f"compare its answers with the base model's.\n\n{DISCLAIMER}")
        raw_state = gr.State(None)  # this visitor's dataset as read: read once, re-mapped freely
        rows_state = gr.State(None)  # ... and mapped: what Start trains on
        dataset_problem = gr.State("")  # why the last read or mapping was refused: Start repeats it

        with gr.Tab("Model", id="model"):
            with gr.Row():
                model_name = dropdown_field(
                    [(f"{name}: {PRESETS[name]}", name) for name in settings.presets],
                    value=settings.presets[0],
                    allow_custom_value=True,
                    label="Model",
                    max_chars=limits.model_id,
                    info="A preset, any Hub repo id (owner/name)"
                    + (", or a model folder on this machine" if settings.allow_local_paths else ""),
                    scale=3,
                )
                load_4bit = checkbox_field(device == "cuda", label="Load in 4-bit (NF4)",
                                        info="Pre-quantized repos are always 4-bit")
                max_length = number_field(model_max_length, range_of(TrainSettings, "max_length"),
                                         label="Max length (tokens)",
                                       info="Rows longer than this are truncated in training and preview")
            with gr.Accordion("Advanced", open=False):
                backend = radio_field(["auto", "hf", "unsloth"], value="auto", label="Backend",
                                   info="auto: Unsloth on a CUDA GPU when installed, else transformers + PEFT")
            load_button = gr.Button("Load model", variant="primary")
            model_status = gr.Markdown("No model loaded yet: pick one and press **Load model**.",
                                       elem_id="model-status")
            model_timer = gr.Timer(1.0, active=False)

        with gr.Tab("Dataset", id="dataset"):
            with gr.Row():
                source = radio_field(SOURCES, value="sample", label="Dataset", scale=2)
                split = text_field("train[0:500]", max_chars=limits.split, label="Hub split (slice)", visible=False)
            upload = gr.File(label=f"Dataset file (.jsonl, .json, .csv, .parquet; up to {settings.max_upload_mb} MB)",
                             visible=False, elem_id="dataset-upload")
            with gr.Row():
                role_pickers = [dropdown_field([NONE], value=NONE, label=f"{role} column", allow_custom_value=True,
                                              max_chars=1000) for role in ROLES]
            with gr.Row():
                template = radio_field(TEMPLATES, value="chat", label="Training text template", scale=2)
                preview_index = number_field(1, Range(1, workspace.read_limits.rows), label="Preview row", scale=1)
            system_prompt = text_field("", max_chars=limits.system_prompt, label="System prompt (optional)", lines=1)
            dataset_status = gr.Markdown(elem_id="dataset-status")
            examples_table = gr.Dataframe(headers=["question", "reasoning", "answer"], interactive=False,
                                          wrap=True, max_height=320, label="First rows",
                                          column_widths=["35%", "40%", "25%"])
            training_text = gr.HighlightedText(
                label="Exact training text of the preview row (highlighted: trained; the rest is the prompt, masked)",
                color_map={"trained": "green"}, show_legend=True, elem_id="training-text",
            )
            # No fixed height on a plot: Gradio's legend and caption sit below it and a fixed height cuts them off.
            histogram = gr.BarPlot(x="tokens", y="rows", color="fits", color_map={"fits": "#4c78a8",
                                   "truncated": "#e45756"}, sort=None, label="Token lengths", color_title="")

        with gr.Tab("Train", id="train") as train_tab:
            with gr.Row():
                max_steps = number_field(train.max_steps, range_of(TrainSettings, "max_steps"), label="Max steps")
                learning_rate = number_field(train.learning_rate, range_of(TrainSettings, "learning_rate"),
                                            label="Learning rate")
                micro_batch = slider_field(train.micro_batch_size, range_of(TrainSettings, "micro_batch_size"),
                                          label="Micro-batch size")
                grad_accum = slider_field(train.grad_accum_steps, range_of(TrainSettings, "grad_accum_steps"),
                                         label="Gradient accumulation")
            with gr.Row():
                lora_r = dropdown_field([4, 8, 16, 32, 64, 128], value=lora.r, label="LoRA rank r")
                lora_alpha = number_field(lora.alpha, range_of(LoraSettings, "alpha"), label="LoRA alpha")
                lora_dropout = number_field(lora.dropout, range_of(LoraSettings, "dropout"), label="LoRA dropout")
                warmup = number_field(train.warmup_steps, range_of(TrainSettings, "warmup_steps"),
                                     label="Warm-up steps")
            with gr.Row():
                scheduler = dropdown_field(list(SCHEDULERS), value=train.lr_scheduler, label="LR schedule")
                optimizer = dropdown_field(list(OPTIMIZERS), value=train.optimizer, label="Optimizer")
                sampling = dropdown_field([("similar lengths", "group_by_length"), ("random order", "random")],
                                         value=train.sampling, label="Batches",
                                         info="similar lengths: less padding; random: the seeds' order")
                seed = number_field(train.seed, range_of(TrainSettings, "seed"), label="Seed")
            with gr.Row():
                checkpointing = checkbox_field(lora.gradient_checkpointing, label="Gradient checkpointing")
                fp8 = checkbox_field(train.fp8_matmuls, label="FP8 base matmuls",
                                    info="Ada/Hopper GPU, 8B-class model; 16-bit elsewhere", elem_id="fp8-matmuls")
                run_name = text_field("", max_chars=limits.name, label="Run name (a folder in the app's output folder)",
                                     placeholder="automatic")
            with gr.Row():
                holdout = number_field(None, range_of(DataSettings, "holdout_rows"),
                                      label="Hold out rows (never trained on; evaluated base vs fine-tuned at the end)",
                                      info=f"Empty: automatic, {HOLDOUT_SHARE:.0%} of the rows, {HOLDOUT_FLOOR} to "
                                           f"{HOLDOUT_CAP}; the Dataset tab says how many are left to train",
                                      placeholder="automatic", elem_id="holdout")
                eval_answers = checkbox_field(True, label="At the end, also generate answers for the held-out rows "
                                           "(format and accuracy; takes longer than the loss alone)")
            with gr.Row():
                start_button = gr.Button("Start training", variant="primary", elem_id="start-training")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop-training")
            with gr.Accordion("Resume a stopped or interrupted run", open=bool(workspace.interrupted_runs),
                              elem_id="resume-panel"):
                gr.Markdown("A run saves a checkpoint ten times along the way and when it is stopped. Resume goes on "
                            "from the last one, with the run's own rows and settings, on the loaded model.")
                with gr.Row():
                    resume_choice = dropdown_field(_resumable_runs(workspace), optional=True, label="Run",
                                                  elem_id="resume-run", scale=3)
                    resume_button = gr.Button("Resume", elem_id="resume-training", scale=1)
                runs_note = gr.Markdown(_interrupted_note(workspace), elem_id="runs-note")
            progress_bar = gr.HTML(_progress_html(0.0), elem_id="train-progress")
            train_status = gr.Markdown("No training run yet.", elem_id="train-status")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="loss", color="curve", label="Loss (raw and smoothed)",
                                        color_map={"raw": "#9ecae9", "smoothed": "#1f5fa8"}, color_title="",
                                        caption="light: each step's loss; dark: smoothed",
                                        elem_id="loss-plot")
                lr_plot = gr.LinePlot(x="step", y="value", label="Learning rate", elem_id="lr-plot")
                grad_plot = gr.LinePlot(x="step", y="value", label="Gradient norm", elem_id="grad-plot")
            # As many lines as the log holds (dashboard.log_lines' 12), so its newest line is always in view.
            train_log = gr.Textbox(label="Log", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False,
                                   autoscroll=True, elem_id="train-log")
            train_eval = gr.Dataframe(headers=["Measure", "Base", "Fine-tuned"], label="Held-out evaluation",
                                      interactive=False, elem_id="train-eval")
            train_eval_source = gr.Markdown(elem_id="train-eval-source")
            timer = gr.Timer(1.0, active=False)

        with gr.Tab("Chat", id="chat") as chat_tab:  # the not-medical-advice banner is above the tabs, once
            chat_runs = workspace.chat_runs()
            with gr.Row():
                mode = radio_field(list(CHAT_MODES), value="Base vs fine-tuned", label="Compare", scale=2)
                chat_run = dropdown_field(chat_runs.runs, optional=True, label="Fine-tuned run", elem_id="chat-run",
                                          value=chat_runs.current if chat_runs.current in chat_runs.runs else None,
                                          info="Whose adapter the fine-tuned pane answers with", scale=1)
            with gr.Row():
                base_chat = chat_pane(label="Base model (adapter off)", elem_id="chat-base", height=460,
                                     buttons=["copy"])
                tuned_chat = chat_pane(label=chat_runs.title, elem_id="chat-tuned", height=460,
                                      buttons=["copy"])
            question = text_field(max_chars=limits.message, label="Question",
                                 placeholder="Describe a clinical case or ask a question…",
                                 lines=2, elem_id="question")
            with gr.Row():
                send_button = gr.Button("Send", variant="primary", elem_id="send")
                chat_stop_button = gr.Button("Stop", variant="stop", elem_id="stop-chat")
                clear_button = gr.Button("Clear")
            chat_status = gr.Markdown(elem_id="chat-status")
            gr.Examples(EXAMPLE_QUESTIONS, inputs=question, label="Example questions")
            with gr.Accordion("Generation settings (DeepSeek-R1 defaults)", open=False):
                with gr.Row():
                    max_new_tokens = slider_field(chat_defaults.max_new_tokens,
                                                 range_of(GenerationSettings, "max_new_tokens"),
                                                 label="Max new tokens (reasoning included)", elem_id="max-new-tokens")
                    temperature = slider_field(chat_defaults.temperature,
                                              range_of(GenerationSettings, "temperature"),
                                              label="Temperature (0: greedy)")
                    top_p = slider_field(chat_defaults.top_p, range_of(GenerationSettings, "top_p"), label="Top-p")
                    repetition_penalty = slider_field(chat_defaults.repetition_penalty,
                                                     range_of(GenerationSettings, "repetition_penalty"),
                                                     label="Repetition penalty")
                    chat_seed = number_field(chat_defaults.seed, range_of(GenerationSettings, "seed"),
                                            label="Seed (same for both panes)")
                with gr.Row():
                    chat_template = radio_field(PROMPT_TEMPLATES, value="auto", label="Prompt template")
                    chat_system = text_field("", max_chars=limits.system_prompt,
                                            label="System prompt (R1 advice: leave empty)")

        with gr.Tab("Evaluate", id="evaluate") as eval_tab:
            gr.Markdown("Base vs fine-tuned on questions the adapter never trained on: held-out loss, whether the "
                        "answer follows a closed reasoning block, and multiple-choice accuracy (the letter is read "
                        "from the answer, never from the reasoning). Sampling as DeepSeek advises (temperature 0.6, "
                        "top-p 0.95) from a fixed seed, so a run repeats exactly. "
                        "Not medical advice: these figures say how a model answers test questions, not whether "
                        "it is safe to use.")
            with gr.Row():
                sources = workspace.evaluation_sources()
                eval_source = dropdown_field(sources, optional=True,
                                            value="real" if workspace.real_rows else "sample-mcq",
                                            label="Evaluate on", elem_id="eval-source", scale=3)
                eval_upload = gr.File(label="Or a file: Question/Complex_CoT/Response rows, with options and "
                                      "answer_idx for multiple choice", file_types=[".jsonl", ".json", ".csv",
                                      ".parquet"], type="filepath", elem_id="eval-upload", scale=3)
            with gr.Row():
                eval_limit = number_field(8, range_of(EvalSettings, "limit"),
                                         label="Sample size (first N questions)")
                eval_tokens = number_field(EvalSettings.for_device(device).max_new_tokens,
                                          range_of(EvalSettings, "max_new_tokens"),
                                          label="Max new tokens per answer", elem_id="eval-tokens")
                eval_template = radio_field(PROMPT_TEMPLATES, value="auto", label="Prompt template")
            with gr.Row():
                eval_button = gr.Button("Evaluate", variant="primary", elem_id="run-eval")
                eval_stop_button = gr.Button("Stop", variant="stop", elem_id="stop-eval")
            eval_estimate = gr.Markdown(elem_id="eval-estimate")
            eval_status = gr.Markdown(elem_id="eval-status")
            eval_table = gr.Dataframe(headers=["Measure", "Base", "Fine-tuned"], interactive=False,
                                      label="Base vs fine-tuned", elem_id="eval-table")
            eval_questions = gr.Dataframe(headers=QUESTION_HEADERS, interactive=False, wrap=True,
                                          label="Per question (✓ right, ✗ wrong or no letter)",
                                          column_widths=_question_widths(len(QUESTION_HEADERS)),
                                          elem_id="eval-questions")
            eval_pick = number_field(1, range_of(EvalSettings, "limit"), label="Show question number",
                                    elem_id="eval-pick")
            eval_detail = gr.Markdown("Run an evaluation, then pick a question number.", elem_id="eval-detail")
            gr.Markdown(published_markdown(), elem_id="published")
            eval_report = gr.State(None)

        with gr.Tab("Export", id="export") as export_tab:
            gr.Markdown("Save what was trained, then share it. Every export is written to a hidden folder first and "
                        "appears whole or not at all. The model card in each export says what it is, how it was "
                        "trained and evaluated, and that it is not medical advice.")
            with gr.Row():
                export_run = dropdown_field(workspace.exportable_runs(), optional=True, label="Run",
                                           elem_id="export-run", scale=1,
                                           info="Its adapter goes on the loaded model, which must be its base")
                export_format = radio_field([(label, fmt) for fmt, label in EXPORT_CHOICES.items()],
                                            value=DEFAULT_EXPORT_FORMAT, label="Format", elem_id="export-format",
                                            scale=3)
                export_name = text_field("", max_chars=limits.name, label="Folder name (under exports/)",
                                        info="Empty: a free automatic name (run-format, then -2, -3…)",
                                        placeholder="automatic", scale=1)
            export_button = gr.Button("Export", variant="primary", elem_id="export")
            export_status = gr.Markdown(elem_id="export-status")
            export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
            with gr.Accordion("Push to the Hugging Face Hub", open=True):
                with gr.Row():
                    push_choice = dropdown_field(workspace.exports(), optional=True, label="Export to push",
                                                value=next(iter(workspace.exports()), None),
                                                elem_id="push-choice")
                    repo_id = text_field("", max_chars=limits.repo_id, label="Repo id",
                                        placeholder="your-name/model-name", elem_id="repo-id")
                    private = checkbox_field(True, label="Private (for a new repo)")
                hub_token = text_field("", max_chars=limits.token, type="password", label="Token with write access",
                                       placeholder="empty: the app's HF_TOKEN secret", elem_id="hub-token",
                                       info="Used for this push only: never shown, logged or kept.")
                push_button = gr.Button("Push", elem_id="push")
                push_status = gr.Markdown(elem_id="push-status")

        # ---------------------------------------------------------------------------------------
        # Model

        def load(name, four_bit, length, backend_name, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
            progress(0.05, desc=f"Loading {name}…")
            try:
                settings = ModelSettings(name=name.strip() or "embedded", load_in_4bit=four_bit, max_length=length,
                                         backend=backend_name)
                # A Hub model's download fills the bar up to 90%; loading it into memory is the rest.
                info = workspace.load(settings, lambda done, line: progress(0.05 + 0.85 * done, desc=line))
                return _model_markdown(info)
            except VISITOR_ERRORS as err:
                return _load_failed_markdown(workspace.shown(err), workspace.loaded)

        def model_status_now():
            """The shared model as it is now; a page that opens during a load watches until it ends."""
            if workspace.loading:
                status = f"Loading **{html.escape(workspace.loading)}**…"
            else:
                status = _model_markdown(workspace.loaded.info) if workspace.loaded else model_status.value
            return status, gr.Timer(active=workspace.loading is not None)

        # ---------------------------------------------------------------------------------------
        # Dataset

        def show_source(choice):
            return gr.update(visible=choice in ("medical-o1", "medical-o1-zh")), gr.update(visible=choice == "upload")

        def read(choice, file, hub_split):
            """Read the choice once; the column pickers get its columns, pre-set to what was detected."""
            try:
                raw = read_dataset(choice, file, hub_split, settings.max_upload_mb, workspace.read_limits)
            except VISITOR_ERRORS as err:
                problem = workspace.shown(err)
                return None, *[gr.update(choices=[NONE], value=NONE)] * len(ROLES), f"⚠ {problem}", problem
            detected = raw.detected()
            pickers = [gr.update(choices=[NONE, *raw.columns], value=detected.get(role, NONE)) for role in ROLES]
            return raw, *pickers, "", ""

        def suggest_template(raw, current):
            """A ### template takes the dataset's voice: medical wording for medical rows, neutral for others."""
            return suggested_template(raw, current) if raw is not None else gr.skip()

        def preview(raw, *args):
            *columns, template_name, system, length, row, held_out = args
            if raw is None:  # the read was refused: its message stays, and so does its reason for Start
                return None, gr.update(), None, None, None, gr.skip()
            data = DataSettings(
                source=raw.name,
                template=template_name,
                columns={role: ("" if column == NONE else column) for role, column in zip(ROLES, columns, strict=True)},
                system_prompt=system,
                holdout_rows=held_out,
            )
            tokenizer = workspace.loaded.tokenizer if workspace.loaded else None
            try:
                shown = preview_dataset(raw, data, tokenizer, length, row - 1)
            except VISITOR_ERRORS as err:
                problem = workspace.shown(err)
                return None, f"⚠ {problem}", None, None, None, problem
            table = pd.DataFrame(shown.table, columns=["question", "reasoning", "answer"])
            segments = [(text, "trained" if trained else None) for text, trained in shown.segments]
            bars = None
            if shown.histogram:  # bins in length order, not alphabetical
                bars = gr.BarPlot(pd.DataFrame(shown.histogram), sort=[b["tokens"] for b in shown.histogram])
            return shown.loaded, shown.summary(), table, segments or None, bars, ""

        # ---------------------------------------------------------------------------------------
        # Training

        def start(rows, template_name, system, length, steps, lr, batch, accum, r, alpha, dropout, warm, sched,
                  optim, batches, checkpoint, train_seed, name, held_out, answers, fp8_matmuls, problem):
            try:
                if rows is None and problem:  # not "no dataset": the visitor picked one, and it was refused
                    raise WorkspaceError(f"The dataset picked in the Dataset tab was refused: {problem} Fix the "
                                         "file or pick another there, then press Start.")
                # The fields arrive checked against the settings' ranges (ui.fields); the settings check again.
                train_settings = TrainSettings(
                    micro_batch_size=batch, grad_accum_steps=accum, warmup_steps=warm, max_steps=steps,
                    learning_rate=lr, lr_scheduler=sched, optimizer=optim, max_length=length, seed=train_seed,
                    sampling=batches, eval_generate=answers, fp8_matmuls=fp8_matmuls,
                    eval_max_new_tokens=train.eval_max_new_tokens,  # the device's, as the form has no field
                )
                lora_settings = LoraSettings(r=r, alpha=alpha, dropout=dropout, gradient_checkpointing=checkpoint,
                                             seed=train_seed)
                data = DataSettings(source=rows.name if rows else "", template=template_name, system_prompt=system,
                                    holdout_rows=held_out)
                job = workspace.start_training(rows, data, train_settings, lora_settings, name)
            except VISITOR_ERRORS as err:
                return f"⚠ {workspace.shown(err)}", gr.Timer(active=workspace.training)
            plan = job.holdout  # what the run holds out, and what that leaves to train
            warning = f" ⚠ {plan.warning}" if plan is not None and plan.warning else ""
            return f"Starting… {plan.summary if plan is not None else ''}{warning}".strip(), gr.Timer(active=True)

        def stop():
            return workspace.stop_training()

        def resume(name):
            try:
                workspace.resume_training(name or "")  # None: nothing picked
            except VISITOR_ERRORS as err:
                return f"⚠ {workspace.shown(err)}", gr.Timer(active=workspace.training)
            return "Resuming…", gr.Timer(active=True)

        def refresh_runs():
            runs = _resumable_runs(workspace)
            return gr.update(choices=runs, value=runs[0][1] if runs else None), _interrupted_note(workspace)

        def running_run_form():
            """The Train tab's form as the run going on was started, for a page opened mid-run; else unchanged."""
            recipe = workspace.running_recipe()
            if recipe is None:
                return [gr.skip()] * len(run_form)
            t, lo, d = recipe.train, recipe.lora, recipe.data
            return [t.max_steps, t.learning_rate, t.micro_batch_size, t.grad_accum_steps, lo.r, lo.alpha, lo.dropout,
                    t.warmup_steps, t.lr_scheduler, t.optimizer, t.sampling, lo.gradient_checkpointing, t.fp8_matmuls,
                    t.seed, Path(workspace.job.output_dir).name, d.holdout_rows, t.eval_generate, d.template,
                    d.system_prompt, t.max_length]

        def dashboard():
            job = workspace.job
            metrics = list(job.metrics) if job else []
            losses = pd.DataFrame(loss_rows(metrics)) if metrics else None
            series = pd.DataFrame(optimizer_rows(metrics)) if metrics else None
            lr_frame = series[series.series == "learning rate"] if series is not None else None
            grad_frame = series[series.series == "grad norm"] if series is not None else None
            # At least ten steps on the axis: fewer and the plot ticks at half steps. Beyond that the axis follows the
            # run, so a long run's first steps are not squeezed into its left edge.
            steps = [0, max(metrics[-1].get("step", 0), 10)] if metrics else None
            losses, lr_frame, grad_frame = (gr.LinePlot(frame, x_lim=steps) if frame is not None else None
                                            for frame in (losses, lr_frame, grad_frame))
            return (
                _progress_html(progress_fraction(job)),
                workspace.shown(progress_line(job)),  # its error may name the run's folder
                losses,
                lr_frame,
                grad_frame,
                workspace.shown(log_lines(job, last=LOG_LINES)),  # its last line may name the run's folder
                _eval_frame((job.result or {}).get("eval") if job else None),
                heldout_caption((job.result or {}).get("eval") if job else None, bool(workspace.real_rows)),
                gr.Timer(active=workspace.training),
                # A run that just ended (stopped, say) may be resumable: the list shows it without a reload.
                *((gr.skip(), gr.skip()) if workspace.training else refresh_runs()),
            )

        # ---------------------------------------------------------------------------------------
        # Chat

        def ask(text, base_messages, tuned_messages, mode_name, new_tokens, temp, nucleus, penalty, gen_seed,
                prompt_template, system, request: gr.Request):
            panes = CHAT_MODES[mode_name]
            chats = {"base": list(base_messages), "tuned": list(tuned_messages)}
            question_message = {"role": "user", "content": text.strip()}
            try:
                histories = {pane: conversation(chats[pane]) for pane in panes}
                settings = GenerationSettings(max_new_tokens=new_tokens, temperature=temp, top_p=nucleus,
                                              repetition_penalty=penalty, seed=gen_seed, system_prompt=system,
                                              template=prompt_template)
                replies = {}
                first = True
                for shown in workspace.chat(text, settings, panes, histories, request.session_hash, replies):
                    base, tuned = (chats[p] + ([question_message, *shown[p]] if p in shown else [])
                                   for p in ("base", "tuned"))
                    # The question box is emptied once: later updates would wipe a next question being typed.
                    yield base, tuned, "" if first else gr.skip(), status_line(replies)
                    first = False
            except VISITOR_ERRORS as err:
                yield chats["base"], chats["tuned"], text, f"⚠ {workspace.shown(err)}"

        def stop_chat(request: gr.Request):
            workspace.stop_chat(request.session_hash)

        def chat_run_view(runs):
            """The run picker and the fine-tuned pane's label, which names the run that answers."""
            value = runs.current if runs.current in runs.runs else None
            return gr.update(choices=runs.runs, value=value), gr.update(label=runs.title)

        def show_chat_runs():
            return chat_run_view(workspace.chat_runs())

        def use_run(run):
            try:
                runs = workspace.use_run(run)
            except VISITOR_ERRORS as err:
                return *chat_run_view(workspace.chat_runs()), f"⚠ {workspace.shown(err)}"
            return *chat_run_view(runs), f"✓ The fine-tuned pane answers with {runs.current} now."

        # ---------------------------------------------------------------------------------------
        # Evaluate

        def run_evaluation(source_name, upload_path, limit, new_tokens, prompt_template, request: gr.Request):
            try:
                settings = EvalSettings(limit=limit, max_new_tokens=new_tokens, template=prompt_template)
                for line, report in workspace.evaluate(source_name, upload_path, settings, request.session_hash):
                    if report is None:
                        yield line, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                        continue
                    table = _eval_frame(report.metrics)
                    headers = question_headers(report)
                    questions = gr.Dataframe(pd.DataFrame(question_rows(report), columns=headers),
                                             column_widths=_question_widths(len(headers)))
                    yield line, table, questions, report, question_detail(report, 1)
            except VISITOR_ERRORS as err:
                yield f"⚠ {workspace.shown(err)}", gr.skip(), gr.skip(), gr.skip(), gr.skip()

        def estimate_evaluation(source_name, upload_path, limit, new_tokens):
            return workspace.evaluation_estimate(source_name, upload_path, limit, new_tokens)

        def stop_evaluation(request: gr.Request):
            workspace.stop_evaluation(request.session_hash)

        def show_question(report, number):
            return question_detail(report, number) if report is not None else gr.skip()

        # ---------------------------------------------------------------------------------------
        # Export

        def export(run, fmt, name, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
            progress(0.1, desc=f"Exporting {EXPORT_CHOICES.get(fmt, fmt)}…")
            try:
                folder = workspace.export(fmt, name or "", run or "")
            except VISITOR_ERRORS as err:
                return f"⚠ {workspace.shown(err)}", None, gr.update(choices=workspace.exports())
            files = sorted(path.name for path in folder.iterdir())
            line = f"✓ Exported to `{workspace.shown(folder)}`: {', '.join(files)}."
            return line, _download(folder, fmt), gr.update(choices=workspace.exports(), value=folder.name)

        def refresh_exports():
            runs = workspace.exportable_runs()
            exports = workspace.exports()  # newest first: the one just made is the one to push
            return (gr.update(choices=runs, value=runs[0] if runs else None),
                    gr.update(choices=exports, value=exports[0] if exports else None))

        def push(export_name, repo, token, private_repo):
            try:
                url = workspace.push(export_name, repo, token, bool(private_repo))
            except VISITOR_ERRORS as err:
                return f"⚠ {workspace.shown(err)}", ""  # the token field is emptied either way
            return f"✓ Pushed {export_name} to {url}", ""

        def show_panes(mode_name):
            panes = CHAT_MODES[mode_name]
            return gr.update(visible="base" in panes), gr.update(visible="tuned" in panes)

        # ---------------------------------------------------------------------------------------
        # Wiring

        load_event = load_button.click(load, [model_name, load_4bit, max_length, backend], model_status,
                                       api_name="load_model", concurrency_id="model", concurrency_limit=1)
        preview_inputs = [raw_state, *role_pickers, template, system_prompt, max_length, preview_index, holdout]
        preview_outputs = [rows_state, dataset_status, examples_table, training_text, histogram, dataset_problem]
        load_event.then(preview, preview_inputs, preview_outputs, api_name=False)

        source.change(show_source, source, [split, upload], api_name=False)
        read_inputs = [source, upload, split]
        read_outputs = [raw_state, *role_pickers, dataset_status, dataset_problem]
        for trigger in (source.change, upload.upload, upload.clear, split.submit):
            trigger(read, read_inputs, read_outputs, api_name=False).then(
                suggest_template, [raw_state, template], template, api_name=False
            ).then(preview, preview_inputs, preview_outputs, api_name=False)
        for control in (*role_pickers, template):
            control.input(preview, preview_inputs, preview_outputs, api_name=False)
        for control in (system_prompt, preview_index, max_length, holdout):
            control.submit(preview, preview_inputs, preview_outputs, api_name=False)
        preview_index.change(preview, preview_inputs, preview_outputs, api_name="preview_dataset")

        start_button.click(
            start,
            [rows_state, template, system_prompt, max_length, max_steps, learning_rate, micro_batch, grad_accum,
             lora_r, lora_alpha, lora_dropout, warmup, scheduler, optimizer, sampling, checkpointing, seed, run_name,
             holdout, eval_answers, fp8, dataset_problem],
            [train_status, timer],
            api_name="start_training",
        )
        stop_button.click(stop, None, train_status, api_name="stop_training")
        resume_button.click(resume, resume_choice, [train_status, timer], api_name="resume_training")
        train_tab.select(refresh_runs, None, [resume_choice, runs_note], api_name="runs")
        dashboard_outputs = [progress_bar, train_status, loss_plot, lr_plot, grad_plot, train_log, train_eval,
                             train_eval_source, timer, resume_choice, runs_note]
        run_form = [max_steps, learning_rate, micro_batch, grad_accum, lora_r, lora_alpha, lora_dropout, warmup,
                    scheduler, optimizer, sampling, checkpointing, fp8, seed, run_name, holdout, eval_answers, template,
                    system_prompt, max_length]
        timer.tick(dashboard, None, dashboard_outputs, show_progress="hidden", api_name="dashboard")

        chat_inputs = [question, base_chat, tuned_chat, mode, max_new_tokens, temperature, top_p,
                       repetition_penalty, chat_seed, chat_template, chat_system]
        chat_outputs = [base_chat, tuned_chat, question, chat_status]
        send_button.click(ask, chat_inputs, chat_outputs, api_name="chat", concurrency_id="model",
                          concurrency_limit=1)
        question.submit(ask, chat_inputs, chat_outputs, api_name=False, concurrency_id="model",
                        concurrency_limit=1)
        # Stop ends this visitor's reply; the stream then closes its bubble and says it was stopped.
        chat_stop_button.click(stop_chat, None, None, api_name="stop_chat")
        clear_button.click(lambda: ([], [], ""), None, [base_chat, tuned_chat, chat_status], api_name=False)
        mode.change(show_panes, mode, [base_chat, tuned_chat], api_name=False)
        # The fine-tuned pane names its run; the picker puts another run's adapter on (a visitor's pick only:
        # `input`, not `change`, so the refresh on selecting the tab puts nothing on).
        chat_tab.select(show_chat_runs, None, [chat_run, tuned_chat], api_name="chat_runs")
        chat_run.input(use_run, chat_run, [chat_run, tuned_chat, chat_status], api_name="use_run")

        eval_inputs = [eval_source, eval_upload, eval_limit, eval_tokens, eval_template]
        eval_outputs = [eval_status, eval_table, eval_questions, eval_report, eval_detail]
        estimate_inputs = [eval_source, eval_upload, eval_limit, eval_tokens]
        eval_button.click(run_evaluation, eval_inputs, eval_outputs, api_name="evaluate", concurrency_id="model",
                          concurrency_limit=1).then(estimate_evaluation, estimate_inputs, eval_estimate,
                                                    api_name=False)  # its own speed is the better rate now
        # Before it starts: about how long the chosen sample takes here, redone on each change.
        for trigger in (eval_source.change, eval_upload.change, eval_limit.change, eval_tokens.change, eval_tab.select):
            trigger(estimate_evaluation, estimate_inputs, eval_estimate, api_name=False, show_progress="hidden")
        eval_stop_button.click(stop_evaluation, None, None, api_name="stop_evaluation")
        eval_pick.change(show_question, [eval_report, eval_pick], eval_detail, api_name=False)
        eval_upload.upload(lambda: "upload", None, eval_source, api_name=False)

        export_button.click(export, [export_run, export_format, export_name],
                            [export_status, export_file, push_choice], api_name="export", concurrency_id="model",
                            concurrency_limit=1)
        export_tab.select(refresh_exports, None, [export_run, push_choice], api_name="exportable")
        push_button.click(push, [push_choice, repo_id, hub_token, private], [push_status, hub_token],
                          api_name="push")

        # A new or reloaded page shows the shared model and re-attaches to a running job.
        demo.load(model_status_now, None, [model_status, model_timer], api_name=False)
        # While a load runs (e.g. --preload), watch it; the preview then gains the exact training text.
        model_timer.tick(model_status_now, None, [model_status, model_timer], show_progress="hidden",
                         api_name=False).then(preview, preview_inputs, preview_outputs, api_name=False)
        demo.load(read, read_inputs, read_outputs, api_name="read_dataset").then(
            suggest_template, [raw_state, template], template, api_name=False
        ).then(preview, preview_inputs, preview_outputs, api_name=False)
        demo.load(dashboard, None, dashboard_outputs, api_name=False)
        demo.load(running_run_form, None, run_form, api_name=False)
        demo.load(show_chat_runs, None, [chat_run, tuned_chat], api_name=False)
    return demo


def _model_markdown(info, heading: str = "✓ **Loaded.**") -> str:
    rows = [
        ("Backend", info.backend), ("Device", info.device), ("Dtype", info.dtype),
        ("Quantization", info.quantization), ("Parameters", f"{info.parameters / 1e6:,.0f} M"),
        ("Memory", f"{info.memory_gb:.2f} GB"), ("Loaded in", f"{info.load_seconds:.1f} s"),
        ("Chat template", "yes" if info.chat_template else "none (the ### template is used)"),
        ("Tokenizer", info.tokenizer_note or "round-trips text unchanged"),
    ]
    table = "\n".join(f"| {key} | {html.escape(str(value))} |" for key, value in rows)
    # The model's name heads the table: a Markdown table needs a header row, and an empty one shows as a blank bar.
    return f"{heading}\n\n| Model | {html.escape(info.name)} |\n|---|---|\n{table}"


def _load_failed_markdown(error: str, loaded) -> str:
    """A failed Load leaves the model that was loaded in use: say so, with its card, under the error."""
    if loaded is None:
        return f"⚠ {error}"
    return _model_markdown(loaded.info, f"⚠ {error}\n\n**Still loaded, and used by chat and training:**")


def _question_widths(columns: int) -> list[str]:
    """Per-question table: "#" and "Gold" get room for their header, the question the most, each model the rest."""
    models = columns - 3
    return ["7%", f"{100 - 7 - 10 - 16 * models}%", "10%", *["16%"] * models]


def _eval_frame(metrics: dict | None) -> pd.DataFrame | None:
    figures = {k: v for k, v in (metrics or {}).items() if k in ("base", "finetuned")}
    return pd.DataFrame(metrics_rows(figures), columns=metrics_headers(figures)) if figures else None


def _progress_html(fraction: float) -> str:
    percent = round(100 * fraction)
    return (f'<div class="progress-track" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
            f'aria-valuemax="100"><div class="progress-fill" style="width: {percent}%"></div></div>')


def _download(folder: Path, fmt: str) -> str | None:
    """One file to download: the GGUF itself, or the adapter zipped; a merged model is too big for a browser."""
    if fmt.startswith("gguf"):
        return str(next(folder.glob("*.gguf")))
    if fmt == "adapter":
        return shutil.make_archive(str(folder), "zip", folder)
    return None


def _resumable_runs(workspace: Workspace) -> list[tuple[str, str]]:
    return [(run.describe(), run.name) for run in workspace.runs() if run.resumable]


def _interrupted_note(workspace: Workspace) -> str:
    if not workspace.interrupted_runs:
        return ""
    names = ", ".join(workspace.interrupted_runs)
    return (f"⚠ The app stopped while training {names}: marked incomplete. Its folder keeps everything up to the "
            "last checkpoint; pick it above and press Resume to go on.")


def launch_options(settings: AppSettings) -> dict:
    """What `launch()` gets: where to listen, the upload limit, and the one folder visitors may download from."""
    settings.exports_dir.mkdir(parents=True, exist_ok=True)
    return dict(server_name=settings.host, server_port=settings.port, share=settings.share,
                max_file_size=f"{settings.max_upload_mb}mb", allowed_paths=[str(settings.exports_dir.resolve())],
                css=CSS, theme=gr.themes.Soft())


def main() -> None:
    try:
        settings = settings_from_env()
    except SettingsError as err:
        raise SystemExit(f"error: {err}") from None
    parser = argparse.ArgumentParser(description=TITLE, epilog=app_settings.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=settings.host, help="default 127.0.0.1, or GRADIO_SERVER_NAME")
    parser.add_argument("--port", type=int, default=settings.port, help="default 7860, or PORT / GRADIO_SERVER_PORT")
    parser.add_argument("--share", action=argparse.BooleanOptionalAction, default=settings.share,
                        help="a temporary public gradio.live link (GRADIO_SHARE)")
    parser.add_argument("--runs-dir", default=str(settings.output_dir),
                        help="where runs and exports are written (FINETUNE_OUTPUT_DIR; default runs)")
    parser.add_argument("--preload", default=settings.preload, help="load this model at start (FINETUNE_PRELOAD)")
    parser.add_argument("--allow-local-paths", action=argparse.BooleanOptionalAction,
                        default=settings.allow_local_paths,
                        help="let visitors name folders on this machine (FINETUNE_ALLOW_LOCAL_PATHS; default off)")
    args = parser.parse_args()
    settings = replace(settings, host=args.host, port=args.port, share=args.share, output_dir=Path(args.runs_dir),
                       preload=args.preload, allow_local_paths=args.allow_local_paths)
    device = default_device()
    workspace = Workspace(settings.output_dir, allow_local_paths=settings.allow_local_paths,
                          real_rows=settings.real_rows, text_limits=settings.text_limits,
                          read_limits=settings.read_limits)
    if settings.preload:  # in the background: the page is usable at once, and shows the model when it is ready
        threading.Thread(target=workspace.load, args=(ModelSettings(settings.preload),), daemon=True).start()
    demo = build_app(workspace, device, settings)
    demo.queue(default_concurrency_limit=4)
    demo.launch(**launch_options(settings))


if __name__ == "__main__":
    main()
