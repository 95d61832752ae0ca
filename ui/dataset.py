"""The Dataset tab: pick the rows to train on, map their columns, and see exactly what a run will train on.

A visitor's choice is read once (`read`) into their session; every change of mapping, template or
length maps and tokenizes it again (`preview`), and the mapped rows are what Start trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from finetune.bounds import Range
from finetune.config import TEMPLATE_LABELS, DataSettings
from finetune.data.prompts import suggested_template
from finetune.data.sources import FILE_TYPES, HUB_PRESETS, ROLES, SAMPLE_FILE
from ui.errors import VISITOR_ERRORS
from ui.fields import dropdown_field, labelled, number_field, radio_field, text_field
from ui.operator_settings import AppSettings
from ui.preview import preview_dataset, read_dataset
from ui.workspace import Workspace

SOURCES = [
    (f"Bundled sample: {len(SAMPLE_FILE.read_text(encoding='utf-8').splitlines())} clinical vignettes", "sample"),
    ("medical-o1-reasoning-SFT, English (Hub)", "medical-o1"),
    ("medical-o1-reasoning-SFT, Chinese (Hub)", "medical-o1-zh"),
    ("Upload a file", "upload"),
]
NONE = "(none)"
"""A column picker's "no column for this role"."""
COLUMNS = ["question", "reasoning", "answer"]


@dataclass
class DatasetTab:
    """What the other tabs use of this one."""

    rows: gr.State
    """This visitor's rows as mapped: what Start trains on (None: nothing read, or refused)."""
    problem: gr.State
    """Why the last read or mapping was refused: Start repeats it rather than "no dataset"."""
    template: gr.Radio
    system_prompt: gr.Textbox
    wire_preview: Callable[..., None]
    """`wire_preview(max_length=, holdout=, model_changed=)`: the preview reads the Model tab's max length
    and the Train tab's hold-out, so its events are wired once those tabs exist."""


def dataset_tab(demo: gr.Blocks, workspace: Workspace, data: DataSettings, settings: AppSettings) -> DatasetTab:
    raw = gr.State(None)  # this visitor's dataset as read: read once, re-mapped freely
    rows = gr.State(None)
    problem = gr.State("")
    with gr.Tab("Dataset", id="dataset"):
        with gr.Row():
            source = radio_field(SOURCES, value="sample", label="Dataset", scale=2)
            split = text_field(data.split, max_chars=workspace.text_limits.split, label="Hub split (slice)",
                               visible=False)
        upload = gr.File(label=f"Dataset file ({', '.join(FILE_TYPES)}; up to {settings.max_upload_mb} MB)",
                         visible=False, elem_id="dataset-upload")
        with gr.Row():
            role_pickers = [dropdown_field([NONE], value=NONE, label=f"{role} column", allow_custom_value=True,
                                           max_chars=1000) for role in ROLES]
        with gr.Row():
            template = radio_field(labelled(TEMPLATE_LABELS), value=data.template, label="Training text template",
                                   scale=2)
            preview_row = number_field(1, Range(1, workspace.read_limits.rows), label="Preview row", scale=1)
        system_prompt = text_field(data.system_prompt, max_chars=workspace.text_limits.system_prompt,
                                   label="System prompt (optional)", lines=1)
        status = gr.Markdown(elem_id="dataset-status")
        examples = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, max_height=320, label="First rows",
                                column_widths=["35%", "40%", "25%"])
        training_text = gr.HighlightedText(
            label="Exact training text of the preview row (highlighted: trained; the rest is the prompt, masked)",
            color_map={"trained": "green"}, show_legend=True, elem_id="training-text",
        )
        # No fixed height on a plot: Gradio's legend and caption sit below it and a fixed height cuts them off.
        histogram = gr.BarPlot(x="tokens", y="rows", color="fits", color_map={"fits": "#4c78a8",
                               "truncated": "#e45756"}, sort=None, label="Token lengths", color_title="")

    def show_source(choice):
        return gr.update(visible=choice in HUB_PRESETS), gr.update(visible=choice == "upload")

    def read(choice, file, hub_split):
        """Read the choice once; the column pickers get its columns, pre-set to what was detected."""
        try:
            read_rows = read_dataset(choice, file, hub_split, settings.max_upload_mb, workspace.read_limits)
        except VISITOR_ERRORS as err:
            refused = workspace.shown(err)
            return None, *[gr.update(choices=[NONE], value=NONE)] * len(ROLES), f"⚠ {refused}", refused
        detected = read_rows.detected()
        pickers = [gr.update(choices=[NONE, *read_rows.columns], value=detected.get(role, NONE)) for role in ROLES]
        return read_rows, *pickers, "", ""

    def suggest_template(read_rows, current):
        """A ### template takes the dataset's voice: medical wording for medical rows, neutral for others."""
        return suggested_template(read_rows, current) if read_rows is not None else gr.skip()

    def preview(read_rows, *columns, template, system_prompt, max_length, row, holdout_rows):
        if read_rows is None:  # the read was refused: its message stays, and so does its reason for Start
            return None, gr.update(), None, None, None, gr.skip()
        chosen = DataSettings(
            source=read_rows.name,
            template=template,
            columns={role: ("" if column == NONE else column) for role, column in zip(ROLES, columns, strict=True)},
            system_prompt=system_prompt,
            holdout_rows=holdout_rows,
        )
        tokenizer = workspace.loaded.tokenizer if workspace.loaded else None
        try:
            shown = preview_dataset(read_rows, chosen, tokenizer, max_length, row - 1)
        except VISITOR_ERRORS as err:
            refused = workspace.shown(err)
            return None, f"⚠ {refused}", None, None, None, refused
        table = pd.DataFrame(shown.table, columns=COLUMNS)
        segments = [(text, "trained" if trained else None) for text, trained in shown.segments]
        bars = None
        if shown.histogram:  # bins in length order, not alphabetical
            bars = gr.BarPlot(pd.DataFrame(shown.histogram), sort=[b["tokens"] for b in shown.histogram])
        return shown.loaded, shown.summary(), table, segments or None, bars, ""

    def wire_preview(*, max_length: gr.Number, holdout: gr.Number, model_changed: list) -> None:
        # /preview_dataset's parameters: the column pickers, then the rest by name.
        previewed = dict(fn=preview, inputs=[raw, *role_pickers],
                         inputs_kwargs={"template": template, "system_prompt": system_prompt,
                                        "max_length": max_length, "row": preview_row, "holdout_rows": holdout},
                         outputs=[rows, status, examples, training_text, histogram, problem])
        read_inputs, read_outputs = [source, upload, split], [raw, *role_pickers, status, problem]

        def read_then_preview(event):
            event.then(suggest_template, [raw, template], template, api_name=False).then(**previewed,
                                                                                         api_name=False)

        source.change(show_source, source, [split, upload], api_name=False)
        for trigger in (source.change, upload.upload, upload.clear, split.submit):
            read_then_preview(trigger(read, read_inputs, read_outputs, api_name=False))
        for control in (*role_pickers, template):
            control.input(**previewed, api_name=False)
        for control in (system_prompt, preview_row, max_length, holdout):
            control.submit(**previewed, api_name=False)
        preview_row.change(**previewed, api_name="preview_dataset")
        # A new model tokenizes differently: the preview gains (or changes) the exact training text.
        for event in model_changed:
            event.then(**previewed, api_name=False)
        # A new or reloaded page reads the default choice (the bundled sample).
        read_then_preview(demo.load(read, read_inputs, read_outputs, api_name="read_dataset"))

    return DatasetTab(rows, problem, template, system_prompt, wire_preview)
