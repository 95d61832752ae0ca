"""The Evaluate tab: base vs fine-tuned on questions the adapter never trained on, figure by figure and
question by question, with an estimate of how long it takes before it starts."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from finetune.bounds import range_of
from finetune.data.sources import FILE_TYPES
from finetune.evaluate.heldout import EvalSettings
from ui.errors import VISITOR_ERRORS, refusal
from ui.fields import dropdown_field, number_field, prompt_template_field
from ui.presenters import (
    QUESTION_HEADERS,
    metrics_frame,
    published_markdown,
    question_detail,
    question_headers,
    question_rows,
    question_widths,
)
from ui.workspace import Workspace

SAMPLE_SIZE = 8
"""Questions evaluated unless the visitor asks for more: a few minutes on a CPU (EvalSettings' None is all)."""


def evaluate_tab(workspace: Workspace, device: str) -> None:
    defaults = EvalSettings.for_device(device)
    with gr.Tab("Evaluate", id="evaluate") as tab:
        gr.Markdown("Base vs fine-tuned on questions the adapter never trained on: held-out loss, whether the "
                    "answer follows a closed reasoning block, and multiple-choice accuracy (the letter is read "
                    "from the answer, never from the reasoning). Sampling as DeepSeek advises (temperature 0.6, "
                    "top-p 0.95) from a fixed seed, so a run repeats exactly. "
                    "Not medical advice: these figures say how a model answers test questions, not whether "
                    "it is safe to use.")
        with gr.Row():
            source = dropdown_field(workspace.evaluation_sources(), optional=True,
                                    value="real" if workspace.real_rows else "sample-mcq",
                                    label="Evaluate on", elem_id="eval-source", scale=3)
            upload = gr.File(label="Or a file: Question/Complex_CoT/Response rows, with options and "
                             "answer_idx for multiple choice", file_types=list(FILE_TYPES), type="filepath",
                             elem_id="eval-upload", scale=3)
        with gr.Row():
            sample_size = number_field(SAMPLE_SIZE, range_of(EvalSettings, "limit"),
                                       label="Sample size (first N questions)")
            max_new_tokens = number_field(defaults.max_new_tokens, range_of(EvalSettings, "max_new_tokens"),
                                          label="Max new tokens per answer", elem_id="eval-tokens")
            template = prompt_template_field()
        with gr.Row():
            run_button = gr.Button("Evaluate", variant="primary", elem_id="run-eval")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop-eval")
        estimate = gr.Markdown(elem_id="eval-estimate")
        status = gr.Markdown(elem_id="eval-status")
        table = gr.Dataframe(headers=["Measure", "Base", "Fine-tuned"], interactive=False, label="Base vs fine-tuned",
                             elem_id="eval-table")
        questions = gr.Dataframe(headers=QUESTION_HEADERS, interactive=False, wrap=True,
                                 label="Per question (✓ right, ✗ wrong or no letter)",
                                 column_widths=question_widths(len(QUESTION_HEADERS)), elem_id="eval-questions")
        pick = number_field(1, range_of(EvalSettings, "limit"), label="Show question number", elem_id="eval-pick")
        detail = gr.Markdown("Run an evaluation, then pick a question number.", elem_id="eval-detail")
        gr.Markdown(published_markdown(), elem_id="published")
        report = gr.State(None)

    def run_evaluation(source_name, upload_path, limit, new_tokens, prompt_template, request: gr.Request):
        try:
            settings = EvalSettings(limit=limit, max_new_tokens=new_tokens, template=prompt_template)
            for line, done in workspace.evaluate(source_name, upload_path, settings, request.session_hash):
                if done is None:
                    yield line, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                headers = question_headers(done)
                per_question = gr.Dataframe(pd.DataFrame(question_rows(done), columns=headers),
                                            column_widths=question_widths(len(headers)))
                yield line, metrics_frame(done.metrics), per_question, done, question_detail(done, 1)
        except VISITOR_ERRORS as err:
            yield refusal(workspace, err), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def estimate_time(source_name, upload_path, limit, new_tokens):
        return workspace.evaluation_estimate(source_name, upload_path, limit, new_tokens)

    def stop(request: gr.Request):
        workspace.stop_evaluation(request.session_hash)

    def show_question(shown_report, number):
        return question_detail(shown_report, number) if shown_report is not None else gr.skip()

    estimated = [source, upload, sample_size, max_new_tokens]
    run_button.click(run_evaluation, [*estimated, template], [status, table, questions, report, detail],
                     api_name="evaluate", concurrency_id="model", concurrency_limit=1).then(
        estimate_time, estimated, estimate, api_name=False)  # its own speed is the better rate now
    # Before it starts: about how long the chosen sample takes here, redone on each change.
    for trigger in (source.change, upload.change, sample_size.change, max_new_tokens.change, tab.select):
        trigger(estimate_time, estimated, estimate, api_name=False, show_progress="hidden")
    stop_button.click(stop, None, None, api_name="stop_evaluation")
    pick.change(show_question, [report, pick], detail, api_name=False)
    upload.upload(lambda: "upload", None, source, api_name=False)
