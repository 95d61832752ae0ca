"""Export what a run trained: the LoRA adapter alone, a merged 16-bit model (the seeds'
`merged_16bit`) that loads with plain transformers, no PEFT and no bitsandbytes, or the merged model
as one GGUF file for llama.cpp / Ollama (`gguf_f16`, `gguf_q8_0`, `gguf_q4_k_m`; see gguf.py).

    export_model(loaded, "runs/demo/merged", "merged_16bit", run_dir="runs/demo")
    export_model(loaded, "runs/demo/gguf", "gguf_q4_k_m", run_dir="runs/demo")   # gguf/model-q4_k_m.gguf

Every export is atomic: it is written into a hidden temporary folder beside the target and moved
into place with one rename, so a failed or stopped export leaves nothing that looks complete. Its
folders and files get the modes a plain mkdir / open gives under the process umask (0755 / 0644 under
the usual 022), not the owner-only ones of temporary files. The model card and adapter_config.json name
the base model's Hub repo (the embedded model's is HuggingFaceTB/SmolLM2-135M-Instruct), never a cache
folder of this machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.config import EXPORT_FORMATS
from finetune.evaluate.heldout import eval_line
from finetune.export.gguf import GGUF_FORMATS, GGUFExportError, export_gguf, run_instructions
from finetune.models.embedded import CACHE_NAME, HUB_REPO, cache_root
from finetune.models.load import LoadedModel, ModelInfo
from finetune.models.merge import inner_model, merged_state_dict
from finetune.runs import read_run_record, run_max_length

FORMATS = EXPORT_FORMATS  # config.ExportFormat: the one list, which export_gguf's formats complete
CONTENTS = {
    "adapter": "the LoRA adapter (load it on the base model with PEFT)",
    "merged_16bit": "the base model with the LoRA adapter merged in, 16-bit (plain transformers)",
    **{fmt: contents for fmt, (_, contents) in GGUF_FORMATS.items()},
}
LIBRARIES = {"adapter": "peft", "merged_16bit": "transformers", **dict.fromkeys(GGUF_FORMATS, "gguf")}
"""The model card's library_name: what the Hub offers to load the repo with."""
MAX_NUMBERED = 999
"""An automatic name taken tries name-2 … name-999: enough for any person, and a loop that ends."""
NOT_MEDICAL_ADVICE = (
    "**Not medical advice.** This model was fine-tuned for research and teaching. Its answers can be wrong "
    "and must never be used to diagnose or treat a patient."
)


class ExportError(RuntimeError):
    """An export that cannot be done; the message says why and what to do."""


def atomic_folder(target: str | Path, next_free: bool = False) -> AtomicFolder:
    """`with atomic_folder(target) as partial:` (see AtomicFolder)."""
    return AtomicFolder(target, next_free)


class AtomicFolder:
    """`with AtomicFolder(target) as partial:` writes into a hidden folder beside `target`, which
    becomes `target` only if the block completes; `.path` is then where it went.

    A taken `target` is refused at once, naming a free name. With `next_free`, it is not: the folder
    gets the first free one of target, target-2, target-3… when it is moved into place, after the
    writing, so two exports that started together (or one started twice) land in two folders."""

    def __init__(self, target: str | Path, next_free: bool = False):
        self.target, self.next_free = Path(target), next_free
        self.partial: Path | None = None
        self.path: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.next_free:
            raise ExportError(taken(self.target))
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.partial = _new_partial_folder(self.target)
        return self.partial

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                plain_modes(self.partial)
                self.path = self._move_into_place()
        finally:
            if self.path is None:
                shutil.rmtree(self.partial, ignore_errors=True)

    def _move_into_place(self) -> Path:
        for candidate in _names(self.target) if self.next_free else [self.target]:
            # rename(2) would put a folder over an empty one: one made meanwhile is taken, so look first.
            if candidate.exists():
                continue
            try:
                os.rename(self.partial, candidate)  # one rename: the folder appears whole, or not at all
                return candidate
            except OSError:
                if not candidate.exists():
                    raise  # not a name taken between the look and the rename: a real failure
        raise ExportError(taken(self.target) if not self.next_free else
                          f"{self.target.name} and its numbered names up to -{MAX_NUMBERED} are all taken: "
                          "pick a name, or remove old exports")


def taken(target: Path) -> str:
    """Why an explicit name is refused, with a name that is free now."""
    return f"{target} already exists: pick another name, such as {free_name(target).name}, or remove it first"


def free_name(target: str | Path) -> Path:
    """The first of target, target-2, target-3… that does not exist now."""
    return next((candidate for candidate in _names(Path(target)) if not candidate.exists()), Path(target))


def _names(target: Path) -> Iterator[Path]:
    yield target
    for number in range(2, MAX_NUMBERED + 1):
        yield target.with_name(f"{target.name}-{number}")


def _new_partial_folder(target: Path) -> Path:
    """A new hidden folder beside `target`, made by a plain mkdir: tempfile.mkdtemp would make it owner-only
    (0700), and the export would keep that mode."""
    while True:
        partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}")
        try:
            partial.mkdir()
            return partial
        except FileExistsError:
            continue


def plain_modes(folder: Path) -> None:
    """Give everything under `folder` the mode a plain mkdir / open gives here (the umask applied), as
    `folder` itself got: safetensors writes its files through an owner-only (0600) temporary file."""
    folder_mode = folder.stat().st_mode & 0o777
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(folder_mode if path.is_dir() else folder_mode & 0o666)


def export_model(loaded: LoadedModel, target: str | Path, fmt: str, run_dir: str | Path | None = None,
                 dtype: torch.dtype = torch.bfloat16, next_free: bool = False) -> Path:
    """Write the adapter or the merged model to `target`, with the tokenizer and a model card; return the
    folder. With `next_free`, a taken `target` moves on to target-2, target-3… (see `atomic_folder`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not loaded.has_adapter:
        raise ExportError("No adapter on the model: train one (or load a run's adapter) before exporting")
    record = read_run_record(run_dir or loaded.adapter_dir)
    base = base_model(loaded.info)
    staged = AtomicFolder(target, next_free)
    with staged as folder:
        if fmt in GGUF_FORMATS:
            _save_gguf(loaded, folder, fmt, base)  # the tokenizer is inside the file
        else:
            if fmt == "adapter":
                loaded.model.save_pretrained(str(folder))
                _name_base_in_adapter_config(folder / "adapter_config.json", base)
            else:
                _save_merged(loaded, folder, dtype)
            loaded.tokenizer.save_pretrained(str(folder))
        (folder / "README.md").write_text(model_card(loaded, record, fmt))
    return staged.path


@dataclass(frozen=True)
class BaseModel:
    """The model a run fine-tuned, as an export names it."""

    repo: str | None
    """Its Hub repo id; None for a local folder that is not a known model."""
    name: str
    """The repo id, or the local folder's name."""

    def describe(self) -> str:
        return self.repo or f"{self.name} (a local folder, not on the Hub)"


def base_model(info: ModelInfo) -> BaseModel:
    """The Hub repo of the loaded model: the embedded model's original, a preset's or Hub model's id, or
    the repo a local folder is a copy of (the embedded model's converted cache, a Hub cache snapshot)."""
    if info.name == "embedded":
        return BaseModel(HUB_REPO, HUB_REPO)
    folder = Path(info.name).expanduser()
    if not (folder.is_dir() and Path(info.path).expanduser() == folder):
        return BaseModel(info.name, info.name)  # loaded from the Hub (its snapshot folder is only the cache)
    folder = folder.resolve()
    if folder == (cache_root() / CACHE_NAME).resolve():
        return BaseModel(HUB_REPO, HUB_REPO)
    cached = next((part for part in folder.parts if part.startswith("models--")), None)
    if cached is not None and folder.parent.name == "snapshots" and cached.count("--") == 2:
        repo = cached.removeprefix("models--").replace("--", "/")  # huggingface_hub's models--owner--name
        return BaseModel(repo, repo)
    return BaseModel(None, folder.name)


def _name_base_in_adapter_config(config_file: Path, base: BaseModel) -> None:
    """PEFT writes the folder the base model was read from (for the embedded model and any Hub model, a
    cache folder of this machine); a pushed adapter must name the repo it goes on. A local folder that is
    no known model keeps its path: the one place the adapter can be loaded on."""
    if base.repo is None:
        return
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base.repo
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _save_merged(loaded: LoadedModel, folder: Path, dtype: torch.dtype) -> None:
    """A plain transformers checkpoint: 4-bit weights dequantized, the adapter merged, in `dtype`."""
    from transformers import AutoModelForCausalLM  # heavy: loads on first use

    config = inner_model(loaded.model).config.__class__.from_dict(inner_model(loaded.model).config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the merged weights are plain 16-bit ones
    state = merged_state_dict(loaded.model, dtype)
    with torch.device("meta"):
        merged = AutoModelForCausalLM.from_config(config, dtype=dtype)
    expected = merged.state_dict().keys()
    missing = [key for key in expected if key not in state]
    if missing:
        raise ExportError(f"cannot merge this model: no weights for {', '.join(missing[:3])}")
    merged.load_state_dict({key: state[key] for key in expected}, assign=True)
    merged.tie_weights()
    merged.save_pretrained(str(folder))


def _save_gguf(loaded: LoadedModel, folder: Path, fmt: str, base: BaseModel) -> None:
    """One GGUF file, always from fp32 merged weights (`dtype` does not apply: the format is the type)."""
    try:
        export_gguf(loaded, folder, fmt, base_name=base.name, base_repo=base.repo)
    except GGUFExportError as err:
        raise ExportError(str(err)) from err


def model_card(loaded: LoadedModel, record: dict, fmt: str) -> str:
    """A model card for the person who finds this folder: what it is, how it was made, how it scored."""
    train, lora, data = record.get("train", {}), record.get("lora", {}), record.get("dataset", {})
    base = base_model(loaded.info)
    lines = [
        *front_matter(base, fmt),
        f"# {base.name}, fine-tuned with LoRA on chain-of-thought data",
        "",
        NOT_MEDICAL_ADVICE,
        "",
        f"- Contents: {CONTENTS[fmt]}",
        f"- Base model: {base.describe()}",
        f"- Dataset: {data.get('name', 'unknown')} ({data.get('stats', {}).get('rows', '?')} rows, "
        f"template {data.get('template', '?')})",
    ]
    if fmt in GGUF_FORMATS:
        lines.append(run_instructions(fmt))
    if train:
        lines.append(
            f"- Recipe: LoRA r{lora.get('r')} alpha {lora.get('alpha')}, micro-batch "
            f"{train.get('micro_batch_size')} x grad-accum {train.get('grad_accum_steps')}, {record.get('steps')} "
            f"steps, lr {train.get('learning_rate')}, {train.get('optimizer')}, max length {run_max_length(record)}"
        )
    if record.get("loss_first") is not None:
        lines.append(f"- Training loss: {record['loss_first']:.3f} → {record['loss_last']:.3f}")
    evaluation = record.get("eval") or {}
    if evaluation.get("base") and evaluation.get("finetuned"):
        source = evaluation.get("source") or {}
        rows = (f"{source['rows']} rows of {source['dataset']}" if source
                else f"{evaluation['finetuned'].get('n')} rows")
        lines.append(f"- Held-out evaluation ({rows}, never trained on): {eval_line(evaluation)}")
    lines += ["", "Made with cot-finetune."]
    return "\n".join(lines) + "\n"


def front_matter(base: BaseModel, fmt: str) -> list[str]:
    """The card's YAML metadata, which the Hub reads: the base model's repo (left out for a local folder:
    the Hub takes base_model for a repo id) and how this export relates to it."""
    relation = "adapter" if fmt == "adapter" else "finetune"  # a GGUF of a fine-tune is no quantization of the base
    lines = ["---"]
    if base.repo is not None:
        lines += [f"base_model: {base.repo}", f"base_model_relation: {relation}"]
    lines += [f"library_name: {LIBRARIES[fmt]}", "pipeline_tag: text-generation", "tags:", "- lora", "- cot-finetune",
              "---", ""]
    return lines
