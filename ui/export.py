"""The Export tab: save what was trained (adapter, merged model or GGUF), download it, push it to the Hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr

from finetune.config import DEFAULT_EXPORT_FORMAT, EXPORT_FORMAT_LABELS
from ui.errors import VISITOR_ERRORS, refusal
from ui.fields import checkbox_field, dropdown_field, labelled, radio_field, text_field
from ui.workspace import Workspace


def export_tab(workspace: Workspace) -> None:
    limits = workspace.text_limits
    with gr.Tab("Export", id="export") as tab:
        gr.Markdown("Save what was trained, then share it. Every export is written to a hidden folder first and "
                    "appears whole or not at all. The model card in each export says what it is, how it was "
                    "trained and evaluated, and that it is not medical advice.")
        with gr.Row():
            run_picker = dropdown_field(workspace.exportable_runs(), optional=True, label="Run", elem_id="export-run",
                                 scale=1, info="Its adapter goes on the loaded model, which must be its base")
            format_picker = radio_field(labelled(EXPORT_FORMAT_LABELS), value=DEFAULT_EXPORT_FORMAT, label="Format",
                              elem_id="export-format", scale=3)
            folder_name = text_field("", max_chars=limits.name, label="Folder name (under exports/)",
                              info="Empty: a free automatic name (run-format, then -2, -3…)",
                              placeholder="automatic", scale=1)
        export_button = gr.Button("Export", variant="primary", elem_id="export")
        status = gr.Markdown(elem_id="export-status")
        download = gr.File(label="Download", interactive=False, elem_id="export-file")
        with gr.Accordion("Push to the Hugging Face Hub", open=True):
            with gr.Row():
                push_choice = dropdown_field(workspace.exports(), optional=True, label="Export to push",
                                             value=next(iter(workspace.exports()), None), elem_id="push-choice")
                repo_id = text_field("", max_chars=limits.repo_id, label="Repo id",
                                     placeholder="your-name/model-name", elem_id="repo-id")
                private = checkbox_field(True, label="Private (for a new repo)")
            hub_token = text_field("", max_chars=limits.token, type="password", label="Token with write access",
                                   placeholder="empty: the app's HF_TOKEN secret", elem_id="hub-token",
                                   info="Used for this push only: never shown, logged or kept.")
            push_button = gr.Button("Push", elem_id="push")
            push_status = gr.Markdown(elem_id="push-status")

    def export(run, fmt, name, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        progress(0.1, desc=f"Exporting {EXPORT_FORMAT_LABELS.get(fmt, fmt)}…")
        try:
            folder = workspace.export(fmt, name or "", run or "")
        except VISITOR_ERRORS as err:
            return refusal(workspace, err), None, gr.update(choices=workspace.exports())
        files = sorted(path.name for path in folder.iterdir())
        line = f"✓ Exported to `{workspace.shown(folder)}`: {', '.join(files)}."
        return line, _download(folder, fmt), gr.update(choices=workspace.exports(), value=folder.name)

    def refresh():
        runs = workspace.exportable_runs()
        exports = workspace.exports()  # newest first: the one just made is the one to push
        return (gr.update(choices=runs, value=runs[0] if runs else None),
                gr.update(choices=exports, value=exports[0] if exports else None))

    def push(export_name, repo, token, private_repo):
        try:
            url = workspace.push(export_name, repo, token, bool(private_repo))
        except VISITOR_ERRORS as err:
            return refusal(workspace, err), ""  # the token field is emptied either way
        return f"✓ Pushed {export_name} to {url}", ""

    export_button.click(export, [run_picker, format_picker, folder_name], [status, download, push_choice],
                        api_name="export", concurrency_id="model", concurrency_limit=1)
    tab.select(refresh, None, [run_picker, push_choice], api_name="exportable")
    push_button.click(push, [push_choice, repo_id, hub_token, private], [push_status, hub_token], api_name="push")


def _download(folder: Path, fmt: str) -> str | None:
    """One file to download: the GGUF itself, or the adapter zipped; a merged model is too big for a browser."""
    if fmt.startswith("gguf"):
        return str(next(folder.glob("*.gguf")))
    if fmt == "adapter":
        return shutil.make_archive(str(folder), "zip", folder)
    return None
