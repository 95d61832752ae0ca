"""The Train tab: the run's settings, Start / Stop / Resume, and a live dashboard of the run.

The run is the workspace's, shared by every visitor: the dashboard's timer redraws it from the job's
history, so a page opened (or reloaded) mid-run shows the same curves, and its form the run's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Generic, TypeVar

import gradio as gr
import pandas as pd

from finetune.bounds import range_of
from finetune.config import (
    LORA_RANKS,
    OPTIMIZERS,
    SAMPLING_LABELS,
    SCHEDULERS,
    DataSettings,
    LoraSettings,
    TrainSettings,
)
from finetune.data.sources import HOLDOUT_CAP, HOLDOUT_FLOOR, HOLDOUT_SHARE, LoadedRows
from finetune.train.recipe import Recipe
from ui.dataset import DatasetTab
from ui.errors import VISITOR_ERRORS, refusal
from ui.fields import checkbox_field, dropdown_field, labelled, number_field, slider_field, text_field
from ui.model import ModelTab
from ui.presenters import (
    heldout_caption,
    interrupted_note,
    log_lines,
    loss_rows,
    metrics_frame,
    optimizer_rows,
    progress_fraction,
    progress_html,
    progress_line,
    resumable_choices,
)
from ui.workspace import Workspace, WorkspaceError

LOG_LINES = 12
"""The log box's height and the steps it shows, so its newest line is always in view."""

T = TypeVar("T")


@dataclass
class RunForm(Generic[T]):
    """A run's settings as the page shows them, one field each: the components while the page is built, their
    values in a handler. The order is /start_training's parameters (keep it: scripts call it by position).
    The Dataset tab holds the template and system prompt, the Model tab the max length; the rest are here."""

    template: T
    system_prompt: T
    max_length: T
    max_steps: T
    learning_rate: T
    micro_batch_size: T
    grad_accum_steps: T
    lora_r: T
    lora_alpha: T
    lora_dropout: T
    warmup_steps: T
    lr_scheduler: T
    optimizer: T
    sampling: T
    gradient_checkpointing: T
    seed: T
    run_name: T
    holdout_rows: T
    eval_generate: T
    fp8_matmuls: T

    def by_name(self) -> dict[str, T]:
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}

    def in_order(self) -> list[T]:
        return [getattr(self, spec.name) for spec in fields(self)]

    @classmethod
    def of_recipe(cls, recipe: Recipe, run_name: str) -> RunForm:
        """The form as a run was started (its recipe.yaml)."""
        t, lo, d = recipe.train, recipe.lora, recipe.data
        return cls(
            template=d.template, system_prompt=d.system_prompt, max_length=recipe.model.max_length,
            max_steps=t.max_steps, learning_rate=t.learning_rate, micro_batch_size=t.micro_batch_size,
            grad_accum_steps=t.grad_accum_steps, lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
            warmup_steps=t.warmup_steps, lr_scheduler=t.lr_scheduler, optimizer=t.optimizer, sampling=t.sampling,
            gradient_checkpointing=lo.gradient_checkpointing, seed=t.seed, run_name=run_name,
            holdout_rows=d.holdout_rows, eval_generate=t.eval_generate, fp8_matmuls=t.fp8_matmuls,
        )

    def settings(self, defaults: Recipe, rows: LoadedRows | None) -> tuple[DataSettings, TrainSettings, LoraSettings]:
        """The run's settings: the form's values over the device's defaults (which hold what the form has no field
        for, such as the answer length of the evaluation at the end). Each class checks its fields again."""
        # The rows are read and mapped already (the Dataset tab): of the data settings, these are left.
        data = DataSettings(source=rows.name if rows else "", template=self.template,
                            system_prompt=self.system_prompt, holdout_rows=self.holdout_rows)
        train = replace(defaults.train, micro_batch_size=self.micro_batch_size, grad_accum_steps=self.grad_accum_steps,
                        warmup_steps=self.warmup_steps, max_steps=self.max_steps, learning_rate=self.learning_rate,
                        lr_scheduler=self.lr_scheduler, optimizer=self.optimizer, seed=self.seed,
                        sampling=self.sampling, eval_generate=self.eval_generate, fp8_matmuls=self.fp8_matmuls)
        lora = replace(defaults.lora, r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                       gradient_checkpointing=self.gradient_checkpointing, seed=self.seed)
        return data, train, lora


@dataclass
class TrainTab:
    """What the other tabs use of this one."""

    holdout: gr.Number
    """Rows kept out of the run (None: automatic): the Dataset tab's preview says what that leaves to train."""


def train_tab(demo: gr.Blocks, workspace: Workspace, defaults: Recipe, model: ModelTab,
              dataset: DatasetTab) -> TrainTab:
    train, lora = defaults.train, defaults.lora
    with gr.Tab("Train", id="train") as tab:
        with gr.Row():
            max_steps = number_field(train.max_steps, range_of(TrainSettings, "max_steps"), label="Max steps")
            learning_rate = number_field(train.learning_rate, range_of(TrainSettings, "learning_rate"),
                                         label="Learning rate")
            micro_batch = slider_field(train.micro_batch_size, range_of(TrainSettings, "micro_batch_size"),
                                       label="Micro-batch size")
            grad_accum = slider_field(train.grad_accum_steps, range_of(TrainSettings, "grad_accum_steps"),
                                      label="Gradient accumulation")
        with gr.Row():
            lora_r = dropdown_field(list(LORA_RANKS), value=lora.r, label="LoRA rank r")
            lora_alpha = number_field(lora.alpha, range_of(LoraSettings, "alpha"), label="LoRA alpha")
            lora_dropout = number_field(lora.dropout, range_of(LoraSettings, "dropout"), label="LoRA dropout")
            warmup = number_field(train.warmup_steps, range_of(TrainSettings, "warmup_steps"), label="Warm-up steps")
        with gr.Row():
            scheduler = dropdown_field(list(SCHEDULERS), value=train.lr_scheduler, label="LR schedule")
            optimizer = dropdown_field(list(OPTIMIZERS), value=train.optimizer, label="Optimizer")
            sampling = dropdown_field(labelled(SAMPLING_LABELS), value=train.sampling, label="Batches",
                                      info="similar lengths: less padding; random: the seeds' order")
            seed = number_field(train.seed, range_of(TrainSettings, "seed"), label="Seed")
        with gr.Row():
            checkpointing = checkbox_field(lora.gradient_checkpointing, label="Gradient checkpointing")
            fp8 = checkbox_field(train.fp8_matmuls, label="FP8 base matmuls",
                                 info="Ada/Hopper GPU, 8B-class model; 16-bit elsewhere", elem_id="fp8-matmuls")
            run_name = text_field("", max_chars=workspace.text_limits.name,
                                  label="Run name (a folder in the app's output folder)", placeholder="automatic")
        with gr.Row():
            holdout = number_field(defaults.data.holdout_rows, range_of(DataSettings, "holdout_rows"),
                                   label="Hold out rows (never trained on; evaluated base vs fine-tuned at the end)",
                                   info=f"Empty: automatic, {HOLDOUT_SHARE:.0%} of the rows, {HOLDOUT_FLOOR} to "
                                        f"{HOLDOUT_CAP}; the Dataset tab says how many are left to train",
                                   placeholder="automatic", elem_id="holdout")
            eval_answers = checkbox_field(train.eval_generate, label="At the end, also generate answers for the "
                                          "held-out rows (format and accuracy; takes longer than the loss alone)")
        with gr.Row():
            start_button = gr.Button("Start training", variant="primary", elem_id="start-training")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop-training")
        with gr.Accordion("Resume a stopped or interrupted run", open=bool(workspace.interrupted_runs),
                          elem_id="resume-panel"):
            gr.Markdown("A run saves a checkpoint ten times along the way and when it is stopped. Resume goes on "
                        "from the last one, with the run's own rows and settings, on the loaded model.")
            with gr.Row():
                resume_choice = dropdown_field(resumable_choices(workspace.runs()), optional=True, label="Run",
                                               elem_id="resume-run", scale=3)
                resume_button = gr.Button("Resume", elem_id="resume-training", scale=1)
            runs_note = gr.Markdown(interrupted_note(workspace.interrupted_runs), elem_id="runs-note")
        progress_bar = gr.HTML(progress_html(0.0), elem_id="train-progress")
        status = gr.Markdown("No training run yet.", elem_id="train-status")
        with gr.Row():
            loss_plot = gr.LinePlot(x="step", y="loss", color="curve", label="Loss (raw and smoothed)",
                                    color_map={"raw": "#9ecae9", "smoothed": "#1f5fa8"}, color_title="",
                                    caption="light: each step's loss; dark: smoothed", elem_id="loss-plot")
            lr_plot = gr.LinePlot(x="step", y="value", label="Learning rate", elem_id="lr-plot")
            grad_plot = gr.LinePlot(x="step", y="value", label="Gradient norm", elem_id="grad-plot")
        log = gr.Textbox(label="Log", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False, autoscroll=True,
                         elem_id="train-log")
        heldout_table = gr.Dataframe(headers=["Measure", "Base", "Fine-tuned"], label="Held-out evaluation",
                                     interactive=False, elem_id="train-eval")
        heldout_source = gr.Markdown(elem_id="train-eval-source")
        timer = gr.Timer(1.0, active=False)

    form = RunForm(
        template=dataset.template, system_prompt=dataset.system_prompt, max_length=model.max_length,
        max_steps=max_steps, learning_rate=learning_rate, micro_batch_size=micro_batch, grad_accum_steps=grad_accum,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, warmup_steps=warmup,
        lr_scheduler=scheduler, optimizer=optimizer, sampling=sampling, gradient_checkpointing=checkpointing,
        seed=seed, run_name=run_name, holdout_rows=holdout, eval_generate=eval_answers, fp8_matmuls=fp8,
    )

    def start(rows, problem, **values):
        chosen = RunForm(**values)
        try:
            if rows is None and problem:  # not "no dataset": the visitor picked one, and it was refused
                raise WorkspaceError(f"The dataset picked in the Dataset tab was refused: {problem} Fix the "
                                     "file or pick another there, then press Start.")
            # The fields arrive checked against the settings' ranges (ui.fields); the settings check again.
            data, train_settings, lora_settings = chosen.settings(defaults, rows)
            job = workspace.start_training(rows, data, train_settings, lora_settings, chosen.run_name,
                                           max_length=chosen.max_length)
        except VISITOR_ERRORS as err:
            return refusal(workspace, err), gr.Timer(active=workspace.training)
        plan = job.holdout  # what the run holds out, and what that leaves to train
        warning = f" ⚠ {plan.warning}" if plan is not None and plan.warning else ""
        return f"Starting… {plan.summary if plan is not None else ''}{warning}".strip(), gr.Timer(active=True)

    def stop():
        return workspace.stop_training()

    def resume(name):
        try:
            workspace.resume_training(name or "")  # None: nothing picked
        except VISITOR_ERRORS as err:
            return refusal(workspace, err), gr.Timer(active=workspace.training)
        return "Resuming…", gr.Timer(active=True)

    def refresh_runs():
        runs = resumable_choices(workspace.runs())
        return (gr.update(choices=runs, value=runs[0][1] if runs else None),
                interrupted_note(workspace.interrupted_runs))

    def running_form():
        """The form as the run going on was started, for a page opened mid-run; else unchanged."""
        recipe = workspace.running_recipe()
        if recipe is None:
            return [gr.skip()] * len(fields(form))
        return RunForm.of_recipe(recipe, Path(workspace.job.output_dir).name).in_order()

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
        figures = (job.result or {}).get("eval") if job else None
        return (
            progress_html(progress_fraction(job)),
            workspace.shown(progress_line(job)),  # its error may name the run's folder
            losses,
            lr_frame,
            grad_frame,
            workspace.shown(log_lines(job, last=LOG_LINES)),  # its last line may name the run's folder
            metrics_frame(figures),
            heldout_caption(figures, bool(workspace.real_rows)),
            gr.Timer(active=workspace.training),
            # A run that just ended (stopped, say) may be resumable: the list shows it without a reload.
            *((gr.skip(), gr.skip()) if workspace.training else refresh_runs()),
        )

    start_button.click(start, [dataset.rows, dataset.problem], [status, timer], inputs_kwargs=form.by_name(),
                       api_name="start_training")
    stop_button.click(stop, None, status, api_name="stop_training")
    resume_button.click(resume, resume_choice, [status, timer], api_name="resume_training")
    tab.select(refresh_runs, None, [resume_choice, runs_note], api_name="runs")
    drawn = [progress_bar, status, loss_plot, lr_plot, grad_plot, log, heldout_table, heldout_source, timer,
             resume_choice, runs_note]
    timer.tick(dashboard, None, drawn, show_progress="hidden", api_name="dashboard")
    # A new or reloaded page re-attaches to a running job: its dashboard, and the form it was started with.
    demo.load(dashboard, None, drawn, api_name=False)
    demo.load(running_form, None, form.in_order(), api_name=False)
    return TrainTab(holdout)
