"""The page: the header with its not-medical-advice banner, then one tab per step, in the order a run goes.

Each tab's module (ui/model.py … ui/export.py) holds its components, handlers and events; a tab returns
the few components another tab reads. The one link between tabs wired here is the dataset preview's:
it reads the Model tab's max length and the Train tab's hold-out, and follows a model load.
"""

from __future__ import annotations

import gradio as gr

from finetune.train.recipe import default_recipe
from ui.chat import chat_tab
from ui.dataset import dataset_tab
from ui.evaluate import evaluate_tab
from ui.export import export_tab
from ui.model import model_tab
from ui.operator_settings import AppSettings
from ui.train import train_tab
from ui.workspace import Workspace

TITLE = "Chain-of-thought fine-tuning"
DISCLAIMER = (
    "⚠️ **Not medical advice.** This is a research and teaching tool. Answers come from a language model "
    "that can be wrong, and the bundled clinical examples are illustrative, not reviewed by clinicians. "
    "Never use an output to diagnose or treat a patient."
)
CSS = """
.progress-track {height: 14px; background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
  border-radius: 7px; overflow: hidden}
.progress-fill {height: 100%; background: var(--color-accent)}
/* An R1 model reasons for thousands of tokens: its bubble scrolls within a bounded height (following the
   end while it streams), so the answer below it stays in view. */
#chat-base .thought-group > .content, #chat-tuned .thought-group > .content {max-height: min(18em, 35vh);
  overflow-y: auto; overscroll-behavior: contain}
"""
"""The page's own styles (`launch(css=...)`): the Train tab's progress bar, the chat panes' reasoning."""


def build_app(workspace: Workspace, device: str, settings: AppSettings | None = None) -> gr.Blocks:
    """The app's page on `device`'s defaults (the recipe the command line starts from), for `workspace`."""
    settings = settings or AppSettings()
    recipe = default_recipe(device)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nLoad a reasoning model, fine-tune it with LoRA on chain-of-thought data, and "
                    f"compare its answers with the base model's.\n\n{DISCLAIMER}")
        model = model_tab(demo, workspace, recipe.model, device, settings)
        dataset = dataset_tab(demo, workspace, recipe.data, settings)
        train = train_tab(demo, workspace, recipe, model, dataset)
        chat_tab(demo, workspace, device)
        evaluate_tab(workspace, device)
        export_tab(workspace)
        dataset.wire_preview(max_length=model.max_length, holdout=train.holdout, model_changed=model.changed)
    return demo
