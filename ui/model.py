"""The Model tab: pick a model and load it for every visitor; its card says what was loaded."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from finetune.bounds import range_of
from finetune.config import BACKEND_LABELS, ModelSettings, choices_of
from finetune.models.load import PRESETS
from ui.errors import VISITOR_ERRORS
from ui.fields import checkbox_field, dropdown_field, number_field, radio_field
from ui.operator_settings import AppSettings
from ui.presenters import load_failed_markdown, model_markdown
from ui.workspace import Workspace


@dataclass
class ModelTab:
    """What the other tabs use of this one."""

    max_length: gr.Number
    """Tokens per row: what the model is prepared for, and what the preview and a run cut rows to."""
    changed: list[gr.events.Dependency]
    """The events after which the loaded model may be another (a Load; a watched load ending)."""


def model_tab(demo: gr.Blocks, workspace: Workspace, defaults: ModelSettings, device: str,
              settings: AppSettings) -> ModelTab:
    with gr.Tab("Model", id="model"):
        with gr.Row():
            model_name = dropdown_field(
                [(f"{preset}: {PRESETS[preset]}", preset) for preset in settings.presets],
                value=settings.presets[0],
                allow_custom_value=True,
                label="Model",
                max_chars=workspace.text_limits.model_id,
                info="A preset, any Hub repo id (owner/name)"
                + (", or a model folder on this machine" if settings.allow_local_paths else ""),
                scale=3,
            )
            # ModelSettings' None: 4-bit on CUDA; the box shows what that means on this device.
            load_4bit = checkbox_field(device == "cuda", label="Load in 4-bit (NF4)",
                                       info="Pre-quantized repos are always 4-bit")
            max_length = number_field(defaults.max_length, range_of(ModelSettings, "max_length"),
                                      label="Max length (tokens)",
                                      info="Rows longer than this are truncated in training and preview")
        with gr.Accordion("Advanced", open=False):
            backend = radio_field(list(choices_of(ModelSettings, "backend")), value=defaults.backend, label="Backend",
                                  info=BACKEND_LABELS["auto"])
        load_button = gr.Button("Load model", variant="primary")
        status = gr.Markdown("No model loaded yet: pick one and press **Load model**.", elem_id="model-status")
        watch = gr.Timer(1.0, active=False)

    def load(name, four_bit, length, backend_name, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        progress(0.05, desc=f"Loading {name}…")
        try:
            chosen = ModelSettings(name=name.strip() or "embedded", load_in_4bit=four_bit, max_length=length,
                                   backend=backend_name)
            # A Hub model's download fills the bar up to 90%; loading it into memory is the rest.
            info = workspace.load(chosen, lambda done, line: progress(0.05 + 0.85 * done, desc=line))
            return model_markdown(info)
        except VISITOR_ERRORS as err:
            return load_failed_markdown(workspace.shown(err), workspace.loaded)

    def status_now():
        """The shared model as it is now; a page that opens during a load watches until it ends."""
        if workspace.loading:
            shown = f"Loading **{html.escape(workspace.loading)}**…"
        else:
            shown = model_markdown(workspace.loaded.info) if workspace.loaded else status.value
        return shown, gr.Timer(active=workspace.loading is not None)

    loaded = load_button.click(load, [model_name, load_4bit, max_length, backend], status, api_name="load_model",
                               concurrency_id="model", concurrency_limit=1)
    # A new or reloaded page shows the shared model; while a load runs (e.g. --preload), it watches it.
    demo.load(status_now, None, [status, watch], api_name=False)
    watched = watch.tick(status_now, None, [status, watch], show_progress="hidden", api_name=False)
    return ModelTab(max_length, changed=[loaded, watched])
