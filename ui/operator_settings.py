"""What the operator of the app decides: where it listens, where runs go, what visitors may do.

Read from the environment (a Space's "Variables", `docker run -e`), then the command line wins:

    PORT or GRADIO_SERVER_PORT   port (7860)
    GRADIO_SERVER_NAME           host (127.0.0.1; 0.0.0.0 in a Space or container)
    GRADIO_SHARE                 1: also open a temporary public gradio.live link
    FINETUNE_OUTPUT_DIR          where runs and exports are written (runs)
    FINETUNE_PRESETS             comma-separated model presets to offer (all)
    FINETUNE_PRELOAD             a model to load at start, e.g. embedded
    FINETUNE_MAX_UPLOAD_MB       largest dataset upload (50)
    FINETUNE_ALLOW_LOCAL_PATHS   1: visitors may type paths on this machine (model folder, dataset
                                 file). Off by default: on a shared Space that would let anyone read
                                 the server's files.
    FINETUNE_REAL_ROWS           a file of real medical-o1 rows the Evaluate tab offers (default
                                 ../shared/data/medical_o1_sample.jsonl where it exists)
    FINETUNE_MAX_ROWS            most rows a dataset may hold once read (100000)
    FINETUNE_MAX_MESSAGE_CHARS   longest chat question (4000): each character is read before the
                                 first token, in one step Stop cannot cut
    FINETUNE_MAX_CONVERSATION_CHARS  a question with its pane's earlier turns (24000)
    FINETUNE_MAX_SYSTEM_PROMPT_CHARS longest system prompt, in chat and in training (2000)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from finetune.bounds import TextLimits
from finetune.data.sources import READ_LIMITS, REAL_ROWS, ReadLimits
from finetune.models.load import PRESETS

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """A bad environment variable or flag, named, with what it accepts."""


@dataclass
class AppSettings:
    host: str | None = None
    port: int | None = None
    share: bool = False
    output_dir: Path = Path("runs")
    presets: tuple[str, ...] = tuple(PRESETS)
    preload: str | None = None
    max_upload_mb: int = 50
    allow_local_paths: bool = False
    real_rows: Path | None = None
    """Real medical-o1 rows to evaluate on, never bundled or trained on; None: not offered."""
    text_limits: TextLimits = field(default_factory=TextLimits)
    read_limits: ReadLimits = READ_LIMITS

    @property
    def exports_dir(self) -> Path:
        return self.output_dir / "exports"


def settings_from_env(env: dict[str, str] | None = None) -> AppSettings:
    env = dict(os.environ if env is None else env)
    port = env.get("PORT") or env.get("GRADIO_SERVER_PORT")
    return AppSettings(
        host=env.get("GRADIO_SERVER_NAME") or None,
        port=_number(port, "PORT") if port else None,
        share=_flag(env.get("GRADIO_SHARE", ""), "GRADIO_SHARE"),
        output_dir=Path(env.get("FINETUNE_OUTPUT_DIR") or "runs"),
        presets=_presets(env.get("FINETUNE_PRESETS", "")),
        preload=env.get("FINETUNE_PRELOAD") or None,
        max_upload_mb=_number(env.get("FINETUNE_MAX_UPLOAD_MB") or "50", "FINETUNE_MAX_UPLOAD_MB"),
        allow_local_paths=_flag(env.get("FINETUNE_ALLOW_LOCAL_PATHS", ""), "FINETUNE_ALLOW_LOCAL_PATHS"),
        real_rows=_real_rows(env.get("FINETUNE_REAL_ROWS", "")),
        text_limits=_text_limits(env),
        read_limits=replace(READ_LIMITS, rows=_number(env["FINETUNE_MAX_ROWS"], "FINETUNE_MAX_ROWS"))
        if env.get("FINETUNE_MAX_ROWS") else READ_LIMITS,
    )


TEXT_LIMIT_VARIABLES = {"message": "FINETUNE_MAX_MESSAGE_CHARS", "conversation": "FINETUNE_MAX_CONVERSATION_CHARS",
                        "system_prompt": "FINETUNE_MAX_SYSTEM_PROMPT_CHARS"}


def _text_limits(env: dict[str, str]) -> TextLimits:
    return TextLimits(**{limit: _number(env[variable], variable)
                         for limit, variable in TEXT_LIMIT_VARIABLES.items() if env.get(variable)})


def _real_rows(text: str) -> Path | None:
    """The operator's file (which must exist), else the shared real rows where they are present."""
    if not text.strip():
        return REAL_ROWS if REAL_ROWS.is_file() else None
    path = Path(text.strip())
    if not path.is_file():
        raise SettingsError(f"FINETUNE_REAL_ROWS: no file at {text.strip()!r}")
    return path


def _number(text: str, name: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise SettingsError(f"{name} must be a whole number above 0, not {text!r}")
    return int(text)


def _flag(text: str, name: str) -> bool:
    if text.strip().lower() not in TRUE + FALSE:
        raise SettingsError(f"{name} must be 1 or 0 (true/false), not {text!r}")
    return text.strip().lower() in TRUE


def _presets(text: str) -> tuple[str, ...]:
    if not text.strip():
        return tuple(PRESETS)
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise SettingsError(f"FINETUNE_PRESETS: unknown preset {unknown[0]!r}; the presets are {', '.join(PRESETS)}")
    return names
