"""The browser app: load a model, pick data, train with a live dashboard, chat base vs fine-tuned.

    python app.py                   # http://127.0.0.1:7860, nothing loaded until you press Load
    python app.py --preload embedded --host 0.0.0.0

The operator's settings (ui/operator_settings.py: the environment, then these flags) → one shared
`Workspace` (the model and the run every visitor sees) → the page (ui/page.py, a module per tab) →
launch. Each visitor's own state (their dataset choice, their chat) lives in Gradio session state.
"""

from __future__ import annotations

import argparse
import threading
from dataclasses import replace
from pathlib import Path

from finetune.models.backend import default_device, import_unsloth_first
from finetune.quiet import drop_library_advisories

# Unsloth patches transformers as it is imported, so it must come first, and PEFT's advisories are dropped
# before PEFT's first import (a chat or export puts an adapter on without training): hence the imports
# below these two calls (E402). Both are no-ops without CUDA.
import_unsloth_first()
drop_library_advisories()

import gradio as gr  # noqa: E402

from finetune.config import ModelSettings  # noqa: E402
from ui import operator_settings  # noqa: E402
from ui.operator_settings import AppSettings, SettingsError, settings_from_env  # noqa: E402
from ui.page import CSS, TITLE, build_app  # noqa: E402
from ui.workspace import Workspace  # noqa: E402


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
    parser = argparse.ArgumentParser(description=TITLE, epilog=operator_settings.__doc__,
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
    workspace = Workspace(settings.output_dir, allow_local_paths=settings.allow_local_paths,
                          real_rows=settings.real_rows, text_limits=settings.text_limits,
                          read_limits=settings.read_limits)
    if settings.preload:  # in the background: the page is usable at once, and shows the model when it is ready
        threading.Thread(target=workspace.load, args=(ModelSettings(settings.preload),), daemon=True).start()
    demo = build_app(workspace, default_device(), settings)
    demo.queue(default_concurrency_limit=4)
    demo.launch(**launch_options(settings))


if __name__ == "__main__":
    main()
