"""The errors a visitor can cause or fix: every tab shows them as one line, never as a traceback."""

from __future__ import annotations

from finetune.data.sources import DatasetError
from finetune.export.save import ExportError
from finetune.generate.reply import ModelBusy
from finetune.hub import PushError
from finetune.models.load import ModelLoadError
from finetune.train.job import TrainingBusy
from ui.workspace import Workspace, WorkspaceError

VISITOR_ERRORS = (DatasetError, ModelLoadError, WorkspaceError, TrainingBusy, ModelBusy, ExportError, PushError,
                  ValueError)


def refusal(workspace: Workspace, err: Exception) -> str:
    """The line a tab shows for a refused request (server paths shortened to what the visitor knows)."""
    return f"⚠ {workspace.shown(err)}"
