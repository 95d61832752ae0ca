"""Replicas of the app's model presets, as their Hub repos ship them, at any width and depth.

A replica has the repo's real file names, its real `config.json` fields (the architecture's
hyper-parameters with `hidden_size`/`num_hidden_layers`/heads swapped for small ones unless
`real_size`), the real R1-Distill-Qwen tokenizer from ../shared/data, the repos'
`generation_config.json`, and random-init weights with a fixed seed; the `unsloth/*-bnb-4bit`
replicas are quantized by bitsandbytes (NF4, double quantization) and saved, so their config.json
carries `quantization_config` as unsloth's repos do.

    folder = build_replica("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", tmp / "qwen")
    hub.add_model("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", folder)   # tests/hub_standin.py

    # On a GPU machine, the real 1.5B architecture (random weights):
    build_replica("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", out, real_size=True)

The Llama replica puts the Qwen ByteLevel tokenizer under a Llama config with `LlamaTokenizerFast`:
we do not have the real Llama-3 tokenizer, and this reproduces the trap those repos set
(../shared/data/README.md): transformers then loads it through LlamaTokenizer and drops every space.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHARED_TOKENIZER = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "r1-distill-qwen-tokenizer"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TOKENIZER_MISSING = f"needs the real R1-Distill tokenizer in {SHARED_TOKENIZER} (../shared is absent here)"

QWEN_VOCAB = 151936  # the Qwen2 embedding rows; the tokenizer's ids stop at 151664
BOS, EOS, VISION_PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|vision_pad|>"
BOS_ID, EOS_ID, VISION_PAD_ID = 151646, 151643, 151654


@dataclass(frozen=True)
class Preset:
    """What one Hub repo ships: its architecture at real size, and the files besides the weights."""

    base_config: str  # a file in configs/ holding the family's config.json fields
    real: dict  # the hyper-parameters of the real size, over base_config
    bnb_4bit: bool  # unsloth's pre-quantized copy
    extra_files: tuple[str, ...]  # files a loader must not download (model card, licence, images)


_QWEN_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "max_window_layers": 28}
_QWEN_14B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40,
             "num_key_value_heads": 8, "max_window_layers": 48, "rope_theta": 1000000.0, "sliding_window": 131072}
_UNSLOTH_FILES = (".gitattributes", "README.md")
_DEEPSEEK_FILES = (".gitattributes", "LICENSE", "README.md", "figures/benchmark.jpg")

PRESETS: dict[str, Preset] = {
    "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit": Preset("deepseek-r1-distill-qwen-1.5b.json", {}, True,
                                                             _UNSLOTH_FILES),
    "unsloth/DeepSeek-R1-Distill-Qwen-7B-bnb-4bit": Preset("deepseek-r1-distill-qwen-1.5b.json", _QWEN_7B, True,
                                                           _UNSLOTH_FILES),
    "unsloth/DeepSeek-R1-Distill-Qwen-14B-bnb-4bit": Preset("deepseek-r1-distill-qwen-1.5b.json", _QWEN_14B, True,
                                                            _UNSLOTH_FILES),
    "unsloth/DeepSeek-R1-Distill-Llama-8B-bnb-4bit": Preset("deepseek-r1-distill-llama-8b.json", {}, True,
                                                            _UNSLOTH_FILES),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": Preset("deepseek-r1-distill-qwen-1.5b.json", {}, False,
                                                        _DEEPSEEK_FILES),
}


def have_tokenizer() -> bool:
    return (SHARED_TOKENIZER / "tokenizer.json").is_file()


def replica_config(repo_id: str, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                   intermediate: int | None = None, real_size: bool = False) -> dict:
    """The config.json fields of `repo_id` (before quantization), at real size or at the given one."""
    preset = PRESETS[repo_id]
    config = {**json.loads((CONFIGS / preset.base_config).read_text()), **preset.real}
    if not real_size:
        config.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=intermediate or 2 * hidden)
        if "max_window_layers" in config:
            config["max_window_layers"] = layers
    if config["model_type"] == "llama":
        # The real repo has the Llama-3 vocabulary (128256, bos 128000, eos 128001); this replica carries
        # the Qwen tokenizer instead, so the embedding must cover its ids and bos/eos are its own.
        config.update(vocab_size=QWEN_VOCAB, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if preset.bnb_4bit:
        config["pad_token_id"] = VISION_PAD_ID  # unsloth's copies set a pad distinct from eos
    return config


def generation_config(repo_id: str) -> dict:
    """As the R1-Distill repos ship it: sampling at temperature 0.6, top-p 0.95."""
    return {"_from_model_config": True, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": True,
            "temperature": 0.6, "top_p": 0.95, "transformers_version": "4.46.0"}


def tokenizer_config(repo_id: str) -> dict:
    """The shared tokenizer_config.json with the chat template inline, as the repos ship it (they predate
    chat_template.jinja). deepseek-ai's copies pad with eos and stop at 16384 tokens; unsloth's pad with
    <|vision_pad|> (the shared file's value)."""
    config = json.loads((SHARED_TOKENIZER / "tokenizer_config.json").read_text())
    config["chat_template"] = (SHARED_TOKENIZER / "chat_template.jinja").read_text()
    if not PRESETS[repo_id].bnb_4bit:
        config.update(pad_token=EOS, model_max_length=16384)
    return config


def build_replica(repo_id: str, folder: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                  kv_heads: int = 2, intermediate: int | None = None, real_size: bool = False, seed: int = 0,
                  device: str | None = None) -> Path:
    """Write a replica of `repo_id` into `folder` (created) and return it.

    Tiny by default (hidden 64, 2 layers: about 20M parameters, nearly all in the 151936-row
    embedding and head); `real_size=True` keeps the real architecture. `device`: where the
    bitsandbytes quantization runs ("cpu" by default; "cuda" on a GPU machine for the real sizes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    if not have_tokenizer():
        raise FileNotFoundError(TOKENIZER_MISSING)
    preset = PRESETS[repo_id]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = replica_config(repo_id, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                            intermediate=intermediate, real_size=real_size)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if not preset.bnb_4bit:
        model.save_pretrained(folder)
    else:
        # Quantize the way unsloth made its copies: load the 16-bit weights with a bitsandbytes config, save.
        with tempfile.TemporaryDirectory() as staging:
            model.save_pretrained(staging)
            del model
            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True,
                                              bnb_4bit_compute_dtype=torch.bfloat16)
            quantized = AutoModelForCausalLM.from_pretrained(staging, quantization_config=quantization,
                                                             dtype=torch.bfloat16,
                                                             device_map={"": device or "cpu"})
            quantized.save_pretrained(folder)
    _write_config(folder, model_type, fields)
    (folder / "generation_config.json").write_text(json.dumps(generation_config(repo_id), indent=2) + "\n")
    shutil.copyfile(SHARED_TOKENIZER / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(repo_id), indent=2,
                                                             ensure_ascii=False) + "\n")
    if preset.bnb_4bit:
        shutil.copyfile(SHARED_TOKENIZER / "special_tokens_map.json", folder / "special_tokens_map.json")
    _write_extra_files(repo_id, folder)
    return folder


def _write_config(folder: Path, model_type: str, fields: dict) -> None:
    """config.json with the fields as the repos spell them (`torch_dtype`, `rope_theta`, ...), not as
    transformers 5 rewrites them on save, so loading converts them as it does for the real repos; the
    quantization_config is the one bitsandbytes wrote."""
    saved = json.loads((folder / "config.json").read_text())
    config = {**fields, "model_type": model_type, "transformers_version": "4.46.0"}
    if "quantization_config" in saved:
        config["quantization_config"] = saved["quantization_config"]
    (folder / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")


def _write_extra_files(repo_id: str, folder: Path) -> None:
    """The files a repo ships besides what loading needs, small stand-ins of them."""
    for name in PRESETS[repo_id].extra_files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == ".gitattributes":
            path.write_text("".join(f"*.{kind} filter=lfs diff=lfs merge=lfs -text\n" for kind in ("safetensors",
                                                                                                  "jpg")))
        elif name.endswith(".jpg"):
            path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(4096))  # an image: binary, so it goes to LFS
        else:
            path.write_text(f"# {repo_id}\n\nA replica for tests: random weights.\n")


def real_size_replica(repo_id: str, root: Path) -> Path:
    """A real-size replica of `repo_id` under `root` (GPU tests), built on the GPU once: a folder that
    already holds one (GPU_REPLICA_DIR shared by the tests of one device run) is used as it is."""
    folder = Path(root) / repo_id.replace("/", "--")
    if not (folder / "model.safetensors").is_file():
        build_replica(repo_id, folder, real_size=True, device="cuda")
    return folder
