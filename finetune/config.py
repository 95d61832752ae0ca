"""Typed settings for one run, built once at the boundary (UI form, CLI flags, tests).

"The seeds" are the reference notebooks this project grew from: Unsloth's LoRA fine-tune of
DeepSeek-R1-Distill-Llama-8B on medical-o1-reasoning-SFT. "The seeds' recipe" is theirs: LoRA r16,
alpha 16, dropout 0 on all 7 projections; micro-batch 2 x gradient accumulation 4; learning rate 2e-4,
linear schedule, 5 warm-up steps, 60 steps; adamw_8bit, weight decay 0.01; seed 3407; max length 2048;
the ### medical template (recipes/seeds-*.yaml write it out).

Defaults are the seeds' recipe on a GPU. `TrainSettings.for_device("cpu")` gives a short demo
recipe that finishes in a few minutes on two cores with the embedded model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, get_args, get_type_hints

from finetune.bounds import SEED_MAX, check_ranges, ranged

# The closed choices, each written once: the dataclasses check them (`check_choices`), and the app's
# widgets and the command line's flags read their values and labels from here.
Backend = Literal["auto", "unsloth", "hf"]
"""'auto': Unsloth when it imports on CUDA, else transformers + PEFT; 'unsloth' or 'hf' to insist."""
BACKEND_LABELS = {"auto": "auto: Unsloth on a CUDA GPU when installed, else transformers + PEFT",
                  "unsloth": "unsloth", "hf": "hf: transformers + PEFT"}
Scheduler = Literal["linear", "cosine", "constant"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
Precision = Literal["auto", "bf16", "fp16", "fp32"]
"""'auto': bf16 where the GPU supports it, else fp16; fp32 on CPU."""
Sampling = Literal["random", "group_by_length"]
"""How rows are batched: 'random' (the seeds' order) or 'group_by_length' (similar lengths, less padding)."""
SAMPLING_LABELS = {"group_by_length": "similar lengths", "random": "random order"}
Side = Literal["base", "finetuned"]
"""The two models compared everywhere (chat panes, evaluation reports): the same weights, adapter off or on."""
ADAPTER_ON: dict[Side, bool] = {"base": False, "finetuned": True}
OPTIMIZERS = ("adamw_8bit", "adamw_torch", "paged_adamw_8bit", "adafactor")
"""The optimisers the app offers (the CLI and recipes take any of transformers' optimizer names)."""
LORA_RANKS = (4, 8, 16, 32, 64, 128)
"""The ranks the app offers (the CLI and recipes take any rank in LoraSettings.r's range)."""
MAX_LENGTH_RANGE = (16, 131_072)
"""Tokens per row, for the model and a run: the longest context of the models offered (128k)."""
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EVAL_MAX_NEW_TOKENS = {"cuda": 4096, "cpu": 768}
"""New tokens per answer when evaluating, by device. R1 models reason for 1,000-4,000 tokens before they
answer, so a GPU evaluation gives them 4,096 (a batch runs as long as its longest reply, and one still
reasoning at 4,000 tokens is usually looping); on CPU the embedded 135M model writes what it learned
from the bundled sample: reasoning and answer of about 650 of its tokens (medical-o1's length), and
about 400 for a lettered question."""


@dataclass
class ModelSettings:
    """Which model to load and how."""

    name: str = "embedded"
    """'embedded', a preset name, a Hub repo id, or a local folder."""
    load_in_4bit: bool | None = None
    """4-bit NF4 weights; None (auto): on with CUDA, off on CPU. Pre-quantized repos are always 4-bit."""
    max_length: int = ranged(2048, *MAX_LENGTH_RANGE)
    """Tokens per row: what a run's rows are cut at (and counted in the preview), and the longest sequence
    the model is prepared for.

    Unsloth sizes its RoPE cache by it. One field for both, so a run's recipe cannot hold two lengths that
    disagree."""
    backend: Backend = "auto"
    """'auto' (Unsloth when it imports on CUDA, else transformers), 'unsloth' or 'hf'."""

    def __post_init__(self) -> None:
        check_choices(self)
        check_ranges(self)

    @classmethod
    def for_device(cls, device: str, **overrides) -> ModelSettings:
        """On CPU rows up to 1,024 tokens: the bundled rows are medical-o1's length, up to ~950 tokens, so
        none is cut, and the demo stays short; on CUDA the seeds' 2,048."""
        return cls(**{"max_length": 2048 if device == "cuda" else 1024, **overrides})


@dataclass
class LoraSettings:
    """The adapter trained on top of the frozen (possibly 4-bit) base model."""

    r: int = ranged(16, 1, 256)
    """The LoRA rank: the inner width of each adapter, so how much it can learn (and how many MB it takes)."""
    alpha: int = ranged(16, 1, 4096)
    """The LoRA scale: the adapter's update is multiplied by alpha / r (alpha / sqrt(r) with rsLoRA)."""
    dropout: float = ranged(0.0, 0.0, 0.9, whole=False)
    """Dropout on the adapters' inputs while training; 0 (the seeds' recipe) is also Unsloth's fast path."""
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    """The projections that get an adapter (comma-separated on the command line): all 7 by default."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale the update by alpha / sqrt(r) rather than alpha / r."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    offload_activations: bool = True
    """Unsloth only: keep checkpointed activations in CPU memory ("unsloth" checkpointing)."""
    seed: int = ranged(3407, 0, SEED_MAX)
    """For the adapter's starting weights (the command line's --seed sets this and the run's seed)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")
        self.target_modules = tuple(self.target_modules)


@dataclass
class TrainSettings:
    """The optimisation loop. Defaults: the seeds' GPU recipe."""

    micro_batch_size: int = ranged(2, 1, 64)
    """Rows per forward and backward pass (a micro-batch)."""
    grad_accum_steps: int = ranged(4, 1, 256)
    """Micro-batches per optimiser step: the effective batch is micro_batch_size x grad_accum_steps rows."""
    warmup_steps: int = ranged(5, 0, 100_000)
    """Optimiser steps over which the learning rate rises from 0 to `learning_rate`."""
    max_steps: int | None = ranged(60, 1, 100_000, optional=True)
    """Stop after this many optimiser steps; None (0 on the command line) trains for `epochs` instead."""
    epochs: float = ranged(1.0, 0.01, 1000, whole=False)
    """Passes over the training rows, when `max_steps` is None."""
    learning_rate: float = ranged(2e-4, 1e-8, 1.0, whole=False)
    """The learning rate after warmup, which `lr_scheduler` then lowers.

    Above 1 every optimiser offered diverges; a run whose loss still turns non-finite fails, saying so."""
    lr_scheduler: Scheduler = "linear"
    """How the learning rate goes after warmup: down to 0 in a line or a cosine, or constant."""
    optimizer: str = "adamw_8bit"
    """Any of transformers' optimizer names, e.g. adamw_8bit (the seeds'), adamw_torch, paged_adamw_8bit."""
    weight_decay: float = ranged(0.01, 0.0, 1.0, whole=False)
    """The optimiser's weight decay on the adapter's weights."""
    precision: Precision = "auto"
    """'auto' (bf16 where the GPU supports it, else fp16; fp32 on CPU), 'bf16', 'fp16' or 'fp32'."""
    seed: int = ranged(3407, 0, SEED_MAX)
    """For the order of the rows and the adapter's start: the same seed, the same run."""
    sampling: Sampling = "random"
    """'random', or 'group_by_length': batches of similar lengths, so less compute goes to padding."""
    eval_generate: bool = True
    """At the end of a run with held-out rows: also generate answers (format, accuracy), not only the loss."""
    eval_max_new_tokens: int = ranged(EVAL_MAX_NEW_TOKENS["cuda"], 1, 131_072)
    """New tokens per held-out answer in that evaluation: room for the reasoning and the answer."""
    save_steps: int | None = ranged(None, 1, 100_000, optional=True)
    """A checkpoint (adapter, optimizer, data position) to resume from every this many steps; None (auto):
    ten a run."""
    fp8_matmuls: bool = False
    """FP8 for the frozen 4-bit base weights' forward matmuls, where it can run: Unsloth, an Ada/Hopper GPU,
    a model 4096 wide or more (8B class); elsewhere a no-op. Off by default: on Llama-8B it measured no
    faster than Unsloth's own 16-bit products at the same batch (docs/benchmarks.md).

    The adapter, its gradients and the loss stay 16-bit (see fp8_matmul.py)."""

    def __post_init__(self) -> None:
        check_choices(self)
        check_ranges(self)

    @classmethod
    def for_device(cls, device: str) -> TrainSettings:
        """On CUDA the seeds' recipe, run fast (see `fast`); on CPU a demo of a few dozen short steps."""
        if device == "cuda":
            return cls.fast()
        return cls(
            micro_batch_size=2,
            grad_accum_steps=1,
            warmup_steps=2,
            max_steps=60,  # 120 of the bundled sample's rows, about 8 minutes on 2 cores (bench/learn.py)
            learning_rate=2e-3,  # a 135M model and a few dozen steps: a high rate shows learning
            optimizer="adamw_torch",
            sampling="group_by_length",
            eval_max_new_tokens=EVAL_MAX_NEW_TOKENS["cpu"],
        )


    @classmethod
    def fast(cls, **overrides) -> TrainSettings:
        """The seeds' recipe at the same effective batch (8), in one micro-batch: the same updates,
        fewer and fuller kernel launches. Unsloth set to 8 x 1 trains as fast (docs/benchmarks.md), so
        this is no lead over Unsloth at its best, only over the seeds' 2 x 4. FP8 base matmuls stay
        off: against Unsloth at 8 x 1 they measured 0.85x to 1.00x on Llama-8B, for 3.75% error per
        product. Batches stay in random order, as in the seeds' recipe: batches of similar
        lengths weigh short rows' tokens more (each batch's loss is a mean over its own tokens), and
        moved Llama-8B's held-out loss beyond the spread of row orders; Unsloth's padding-free
        batches leave little padding for them to save."""
        return cls(**{"micro_batch_size": 8, "grad_accum_steps": 1, "sampling": "random", **overrides})


def lora_for_device(device: str) -> LoraSettings:
    """Gradient checkpointing saves GPU memory; on CPU with a small model it only costs time."""
    return LoraSettings(gradient_checkpointing=device == "cuda")


Template = Literal["chat", "plain", "plain-neutral"]
"""How an example becomes training text (finetune/data/prompts.py writes each):
- 'chat': the model's own chat template, the reasoning in a <think> block;
- 'plain': the seeds' ### template in their medical voice ("You are a medical expert…", "### Clinical
  Assessment:"), unchanged, so existing runs and recipes read the same;
- 'plain-neutral': the same ### layout with a neutral role and headers, for data that is not medical.
A run stores its template (run.json), and chat and evaluation prompt and split the way it was trained."""
TEMPLATES: tuple[str, ...] = get_args(Template)
TEMPLATE_LABELS = {
    "chat": "The model's chat template, reasoning in a <think> block",
    "plain": "### Question / ### Thinking Process / ### Clinical Assessment (medical)",
    "plain-neutral": "### Question / ### Reasoning / ### Answer (neutral, any subject)",
}
"""What a person picks from, by template: the app's radios read these rather than write their own.
(tests/unit/test_templates_and_holdout.py checks that each ### label names its template's headers.)"""

ExportFormat = Literal["adapter", "merged_16bit", "gguf_q8_0", "gguf_q4_k_m", "gguf_f16"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORT_FORMAT_LABELS = {
    "adapter": "LoRA adapter (small; needs the base model)",
    "merged_16bit": "Merged 16-bit model (plain transformers)",
    "gguf_q8_0": "GGUF q8_0 (llama.cpp, Ollama)",
    "gguf_q4_k_m": "GGUF q4_k_m (smallest)",
    "gguf_f16": "GGUF f16",
}
DEFAULT_EXPORT_FORMAT: ExportFormat = "adapter"
"""What the Export tab and `python -m finetune export` write unless told otherwise: the LoRA adapter, a few
MB that load on their base model with PEFT, rather than a merged model of the base's full size (269 MB for
the embedded model, 16 GB for an 8B). What each writes: finetune.export.save.CONTENTS."""


@dataclass
class DataSettings:
    """Where the rows come from and how they become training text."""

    source: str = "sample"
    """'sample', 'medical-o1' (en), 'medical-o1-zh', or a .jsonl/.json/.csv/.parquet path."""
    split: str = "train[0:500]"
    """Hub datasets only: which slice to download."""
    template: Template = "chat"
    """'chat' (the model's chat template, the reasoning in a <think> block), 'plain' (the seeds' medical ###
    template) or 'plain-neutral' (### with a neutral role and headers).

    One of TEMPLATES; `suggested_template` picks one for a dataset."""
    columns: dict[str, str] = field(default_factory=dict)
    """Overrides for the detected mapping, role=column: roles question, reasoning, answer, messages, context."""
    system_prompt: str = ""
    """Replaces the ### templates' role; a system message for chat."""
    max_rows: int | None = ranged(None, 1, 10_000_000, optional=True)
    """Read only the first this many rows; None reads them all."""
    holdout_rows: int | None = ranged(0, 0, 10_000, optional=True)
    """Rows kept out of training (picked at random, fixed seed) and evaluated on at the end, base vs
    fine-tuned. None (auto): sized to the data, a share of the rows between a floor and a cap, and none from
    a dataset too small to spare them.

    None is what the Train tab and the CLI start from (`default_recipe`); the sizes are
    `finetune.data.sources.holdout_plan`'s. The class's own 0 keeps a run built in code as it was: all rows
    trained, no evaluation at the end."""

    def __post_init__(self) -> None:
        check_choices(self)
        check_ranges(self)


def choices_of(settings_class: type, name: str) -> tuple[str, ...]:
    """The values a Literal-typed field of a settings dataclass takes, for a widget or a flag."""
    return get_args(get_type_hints(settings_class)[name])


def check_choices(settings) -> None:
    """Refuse a value outside its field's Literal, naming the field and the choices."""
    hints = get_type_hints(type(settings))
    for spec in fields(settings):
        allowed = get_args(hints[spec.name]) if getattr(hints[spec.name], "__origin__", None) is Literal else ()
        value = getattr(settings, spec.name)
        if allowed and value not in allowed:
            raise ValueError(f"{spec.name} must be one of {', '.join(map(str, allowed))}, not {value!r}")
