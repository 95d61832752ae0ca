"""What the benchmark trains on and which models it builds.

Rows are token sequences whose lengths follow the medical-o1 rows (prompt: the question; trained
part: reasoning and answer), at about 4 characters a token, with random token ids: throughput does
not depend on which tokens they are. Models on a GPU are random-init from the real configs kept in
`configs/`, saved once to a folder that the engine then loads like any local model.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from finetune.data.prompts import IGNORE_INDEX, LengthStats, PreparedDataset, TokenizedRow
from finetune.models.backend import default_device

ROOT = Path(__file__).resolve().parent.parent
CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS = (24, 12)
"""Chat-template tokens around the question and after the answer (R1 template: about this many)."""
MODELS = {
    "embedded": None,
    "qwen-1.5b": ROOT / "configs" / "deepseek-r1-distill-qwen-1.5b.json",
    "llama-8b": ROOT / "configs" / "deepseek-r1-distill-llama-8b.json",
}
TOKENIZERS = {
    "qwen-1.5b": ROOT / ".gpu-carry" / "tokenizer",  # the real R1-Distill-Qwen tokenizer (../shared/data)
    # The Llama-3 tokenizer is not here and the R1 one's ids pass Llama's 128,256: SmolLM2's (49,152) fit.
    "llama-8b": ROOT / ".gpu-carry" / "smollm2-tokenizer",
}
"""Where the benchmark's model folders take their tokenizer from (BENCH_TOKENIZER overrides): real text
is tokenized by it for the loss curve, the evaluation and the demo."""
DATA_CANDIDATES = (
    ROOT.parent / "shared" / "data" / "medical_o1_sample.jsonl",
    ROOT / ".gpu-carry" / "medical_o1_sample.jsonl",
)


def medical_o1_file() -> Path:
    for path in (Path(os.environ["BENCH_DATA"]),) if os.environ.get("BENCH_DATA") else DATA_CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError("medical_o1_sample.jsonl not found: set BENCH_DATA to its path")


def row_lengths(path: Path) -> list[tuple[int, int]]:
    """(prompt tokens, trained tokens) per medical-o1 row, at about 4 characters a token."""
    lengths = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        prompt = math.ceil(len(row["Question"]) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS[0]
        trained = math.ceil((len(row["Complex_CoT"]) + len(row["Response"])) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS[1]
        lengths.append((prompt, trained))
    return lengths


def synthetic_dataset(rows: int, max_length: int, vocab_size: int, seed: int = 0) -> PreparedDataset:
    """`rows` training rows with medical-o1 lengths (cycled), random ids, prompt tokens masked."""
    rng = random.Random(seed)
    lengths = row_lengths(medical_o1_file())
    tokenized = []
    for i in range(rows):
        prompt, trained = lengths[i % len(lengths)]
        ids = [rng.randrange(100, vocab_size) for _ in range(prompt + trained)]
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        tokenized.append(TokenizedRow(ids[:max_length], labels[:max_length], "", "", prompt + trained))
    full = sorted(row.full_length for row in tokenized)
    stats = LengthStats(
        rows=rows,
        min=full[0],
        mean=round(sum(full) / rows, 1),
        median=full[rows // 2],
        p95=full[min(rows - 1, int(0.95 * rows))],
        max=full[-1],
        truncated=sum(row.truncated for row in tokenized),
        dropped=0,
        trained_tokens=sum(sum(label != IGNORE_INDEX for label in row.labels) for row in tokenized),
        max_length=max_length,
    )
    return PreparedDataset("medical-o1 lengths, random ids", "chat", tokenized, stats, full)


def model_folder(key: str) -> str:
    """'embedded', or a folder holding random-init bf16 weights from the real config (built once)."""
    if MODELS[key] is None:
        return "embedded"
    import torch  # heavy: `python -m bench` imports this module first
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # heavy, as torch

    folder = Path(os.environ.get("BENCH_MODELS", "/tmp/bench-models")) / key
    if (folder / "config.json").is_file():
        return str(folder)
    config = AutoConfig.from_pretrained(MODELS[key])
    torch.manual_seed(0)
    with torch.device(default_device()):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("BENCH_TOKENIZER", TOKENIZERS[key]))
    tokenizer.save_pretrained(folder)
    return str(folder)
