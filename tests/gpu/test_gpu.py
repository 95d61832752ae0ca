"""GPU checks: the Unsloth path and the plain transformers + bitsandbytes 4-bit path each train
10 steps on a random-init model built from the DeepSeek-R1-Distill-Qwen-1.5B config, then stream
a chat. Run on a CUDA machine, one backend per process (Unsloth patches transformers on import):

    FINETUNE_NO_UNSLOTH=1 pytest -m gpu -k hf
    pytest -m gpu -k unsloth

Figures (s/step, tokens/s, peak memory, time to first token) go to $GPU_REPORT_DIR if set.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "deepseek-r1-distill-qwen-1.5b.json"
R1_TEMPLATE = ROOT / "configs" / "r1_chat_template.jinja"


@pytest.fixture(scope="module")
def random_r1_model(tmp_path_factory) -> Path:
    """A folder with random bf16 weights from the real config and a tokenizer wearing the R1 template."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("r1-random")
    config = AutoConfig.from_pretrained(CONFIG)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("GPU_TOKENIZER_DIR", ROOT / ".gpu-carry" / "tokenizer"))
    tokenizer.chat_template = R1_TEMPLATE.read_text()
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_backend_trains_and_streams(backend, random_r1_model, tmp_path):
    from finetune.models.backend import unsloth_available

    if backend == "unsloth" and not unsloth_available():
        pytest.fail("unsloth does not import on this CUDA machine")
    if backend == "hf" and unsloth_available():
        pytest.skip("run the hf path in a process without Unsloth: FINETUNE_NO_UNSLOTH=1")
    from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
    from finetune.data.prompts import prepare_dataset
    from finetune.generate.reply import GenerationSettings, stream_reply
    from finetune.models.load import load_model
    from finetune.train.recipe import Recipe
    from finetune.train.trainer import start_training

    torch.cuda.reset_peak_memory_stats()
    loaded = load_model(ModelSettings(str(random_r1_model), load_in_4bit=True, max_length=1024, backend=backend))
    assert loaded.info.backend == backend
    assert loaded.info.quantization.startswith("4-bit")
    source = os.environ.get("GPU_DATASET", "sample")
    chosen = DataSettings(source=source, max_rows=120)
    data = prepare_dataset(chosen, loaded.tokenizer, max_length=1024)

    def recipe(train: TrainSettings, folder: str) -> Recipe:  # at the 1024 tokens the model was loaded for
        return Recipe(loaded.settings, chosen, train, LoraSettings(), str(tmp_path / folder))

    job = start_training(loaded, data, recipe(TrainSettings(max_steps=10), "run"))  # the seeds': 2 x 4, adamw_8bit
    assert job.wait(timeout=900), "training did not finish in 15 minutes"
    assert job.status == "done", job.error
    assert len(job.metrics) == 10
    assert all(m["loss"] == m["loss"] for m in job.metrics)  # no NaN
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    train_peak = torch.cuda.max_memory_allocated() / 2**30

    started = time.perf_counter()
    first_token_s, replies = None, []
    settings = GenerationSettings(max_new_tokens=128, seed=0)
    for reply in stream_reply(loaded, "A 60-year-old man has crushing chest pain. Next step?", settings):
        if first_token_s is None:
            first_token_s = time.perf_counter() - started
        replies.append(reply)
    final = replies[-1]
    assert final.done and final.tokens > 0
    # The R1 prompt ends inside <think>: text streams as thinking until a </think> (if any) arrives.
    assert final.thinking or final.answer
    assert final.decoder.endswith("CUDA graphs"), final.decoder  # chat took the fast path
    assert "float16 weights" in final.decoder  # 16-bit, even where PEFT upcast the embeddings
    fast_chat_peak = torch.cuda.max_memory_allocated() / 2**30

    # Chat, then train again: the fast decoder's 16-bit copy is dropped, and the new run trains.
    again = start_training(loaded, data, recipe(TrainSettings(max_steps=3), "r2"))
    assert again.wait(timeout=600) and again.status == "done", again.error
    assert all(m["grad_norm"] > 0 for m in again.metrics)
    assert loaded.decoder is None
    assert list(stream_reply(loaded, "Define sepsis.", GenerationSettings(max_new_tokens=16)))[-1].tokens == 16

    # Stop, then resume from the checkpoint written at the stop: the run ends at its planned step.
    from finetune.train.trainer import resume_training

    stopped = start_training(loaded, data, recipe(TrainSettings(max_steps=6), "r3"))
    while len(stopped.metrics) < 2:
        time.sleep(0.05)
    stopped.stop()
    assert stopped.wait(timeout=600) and stopped.status == "stopped", stopped.error
    resumed = resume_training(loaded, tmp_path / "r3")
    assert resumed.wait(timeout=600) and resumed.status == "done", resumed.error
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4, 5, 6]
    steady = job.metrics[2:]
    report = {
        "backend": backend,
        "gpu": torch.cuda.get_device_name(),
        "model": "random-init DeepSeek-R1-Distill-Qwen-1.5B config, 4-bit NF4 on load",
        "load_s": loaded.info.load_seconds,
        "rows": len(data.rows),
        "mean_tokens_per_row": data.stats.mean,
        "s_per_step": round(sum(m["elapsed_s"] for m in steady[-1:]) / steady[-1]["step"], 3),
        "tokens_per_s_after_warmup": round(sum(m["tokens_per_s"] for m in steady) / len(steady), 1),
        "train_peak_gb": round(train_peak, 2),
        "chat_first_token_s": round(first_token_s, 3),
        "chat_tokens": final.tokens,
        "chat_tokens_per_s": round(final.tokens / final.seconds, 1),
        "chat_decoder": final.decoder,
        "chat_peak_gb": round(fast_chat_peak, 2),
        "losses": [m["loss"] for m in job.metrics],
    }
    print(json.dumps(report))
    if os.environ.get("GPU_REPORT_DIR"):
        Path(os.environ["GPU_REPORT_DIR"], f"gpu_{backend}.json").write_text(json.dumps(report, indent=2))


def _fp8_capable() -> None:
    from finetune.models.backend import unsloth_available
    from finetune.train.fp8_matmul import fp8_supported

    if not fp8_supported():
        pytest.skip("FP8 products need an Ada or Hopper GPU")
    if not unsloth_available():
        pytest.skip("the FP8 path stands in for Unsloth's kernels: run it where Unsloth imports")


def _wide_nf4_layer(out_features: int, in_features: int, nested: bool):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16,
                              compress_statistics=nested, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(out_features, in_features) * 0.02, requires_grad=False,
                                     compress_statistics=nested, quant_type="nf4")
    layer = layer.cuda()
    layer.weight.quant_state.dtype = torch.bfloat16
    return layer


@pytest.mark.parametrize("nested", [True, False])
def test_nf4_weights_become_the_fp8_values_bitsandbytes_would_give(nested):
    """Our Triton kernel against bitsandbytes' own dequantization (float32), then FP8 rounding. The
    kernel scales a block's absmax before multiplying by the NF4 code, bitsandbytes after: the two
    roundings may land one FP8 step apart, rarely; a wrong nibble order, block or scale would not."""
    _fp8_capable()
    import bitsandbytes.functional as F

    from finetune.train.fp8_matmul import nf4_to_fp8, prepare_row_scales

    layer = _wide_nf4_layer(1536, 8960, nested)
    prepare_row_scales(layer)
    quant_state = layer.weight.quant_state
    in_float32 = copy.copy(quant_state)
    in_float32.dtype = torch.float32
    scale = quant_state.fp8_row_scale.view(-1, 1)
    expected = (F.dequantize_4bit(layer.weight, in_float32) / scale).to(torch.float8_e4m3fn)
    ours = nf4_to_fp8(layer.weight, quant_state)
    steps_apart = (ours.view(torch.uint8).int() - expected.view(torch.uint8).int()).abs()
    assert steps_apart.max().item() <= 1 and (steps_apart == 0).float().mean().item() > 0.999


def test_the_fp8_stand_in_matches_unsloths_matmul_eager_and_compiled():
    _fp8_capable()
    from unsloth.kernels import fast_lora

    from finetune.train.fp8_matmul import fp8_base_matmuls, fp8_calls

    layer = _wide_nf4_layer(4096, 4096, nested=True)
    weight, quant_state = layer.weight, layer.weight.quant_state
    lora_a = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16) * 0.01
    lora_b = torch.randn(4096, 16, device="cuda", dtype=torch.bfloat16) * 0.01
    x = torch.randn(2, 700, 4096, device="cuda", dtype=torch.bfloat16)
    original = fast_lora.matmul_lora

    def multiply(inputs):
        return fast_lora.matmul_lora(inputs, weight, quant_state, lora_a, lora_b, 2.0)

    expected = multiply(x).float()
    with fp8_base_matmuls(layer):
        eager = multiply(x).float()
        compiled = torch.compile(multiply, fullgraph=True)(x.clone()).float()  # no graph break around it
        one_row = multiply(x[:, :1].contiguous())  # decoding: left to Unsloth
        assert fp8_calls() == 2
    for result in (eager, compiled):
        assert (result - expected).norm() / expected.norm() < 0.06  # FP8 rounds to 3 mantissa bits
    torch.testing.assert_close(one_row, original(x[:, :1].contiguous(), weight, quant_state, lora_a, lora_b, 2.0))
    assert fast_lora.matmul_lora is original and not hasattr(quant_state, "fp8_row_scale")


def test_a_wide_model_trains_with_fp8_and_says_so(tmp_path):
    """A 4096-wide, two-layer Llama: the width at which FP8 pays (Llama-8B's)."""
    _fp8_capable()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
    from finetune.data.prompts import prepare_dataset
    from finetune.models.load import load_model
    from finetune.train.recipe import Recipe
    from finetune.train.trainer import start_training

    tokenizer_dir = Path(os.environ.get("GPU_TOKENIZER_DIR", ROOT / ".gpu-carry" / "tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # only its size is used
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=2, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=len(tokenizer), max_position_embeddings=4096)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "wide")
    # The tokenizer's own files, not a re-save: a Llama folder over this ByteLevel tokenizer loads as
    # LlamaTokenizer, which drops spaces (the trap load_model repairs), and saving that one keeps it broken.
    shutil.copytree(tokenizer_dir, tmp_path / "wide", dirs_exist_ok=True)
    (tmp_path / "wide" / "chat_template.jinja").write_text(R1_TEMPLATE.read_text())
    loaded = load_model(ModelSettings(str(tmp_path / "wide"), load_in_4bit=True, max_length=1024, backend="unsloth"))
    data = prepare_dataset(DataSettings(max_rows=64), loaded.tokenizer, max_length=1024)
    losses = {}
    for fp8 in (False, True):
        train = TrainSettings.fast(max_steps=4, fp8_matmuls=fp8)
        job = start_training(loaded, data, Recipe(loaded.settings, DataSettings(max_rows=64), train, LoraSettings(),
                                                  str(tmp_path / f"run-{fp8}")))
        assert job.wait(timeout=600) and job.status == "done", job.error
        assert job.result["fp8_matmuls"] is fp8
        losses[fp8] = job.metrics[0]["loss"]  # the same model and rows: the first losses compare
    assert abs(losses[True] - losses[False]) < 0.02 * losses[False]


def test_a_batch_decoded_in_one_graph_writes_what_each_question_alone_writes():
    """Evaluation's batched path on CUDA (one graph replay a step for the whole batch, prompts of
    different lengths, a last batch smaller than the decoder's) against batch-1 decoding, in float32
    so that the two orders of summation cannot part the greedy choices."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from finetune.generate.fast_decode import FastDecoder, Sampling

    config = AutoConfig.for_model("qwen2", vocab_size=512, hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda().eval()
    alone = FastDecoder(model, capacity=256, dtype=torch.float32)
    alone.load_weights(model, use_adapter=False)
    together = FastDecoder(model, capacity=256, dtype=torch.float32, batch=8)
    together.load_weights(model, use_adapter=False)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (n,), generator=generator) for n in (7, 40, 3, 19, 64)]
    expected = [list(alone.generate(p, 48, Sampling(), set())) for p in prompts]
    assert together.generate_batch(prompts, 48, Sampling(), set()) == expected
    assert together.graph is not None  # the steps were graph replays


def test_the_4bit_decoder_replays_one_graph_and_adds_only_its_cache(random_r1_model):
    """Where no 16-bit copy fits, chat decodes over the model's own 4-bit weights: bitsandbytes' kernels
    must capture into the CUDA graph (the replayed tokens are the eager ones), and the decoder must add
    little beyond its KV cache."""
    from finetune.config import LoraSettings, ModelSettings
    from finetune.generate.fast_decode import FastDecoder, Sampling
    from finetune.models.adapters import attach_fresh_adapter
    from finetune.models.load import load_model

    loaded = load_model(ModelSettings(str(random_r1_model), load_in_4bit=True))
    attach_fresh_adapter(loaded, LoraSettings(gradient_checkpointing=False))
    loaded.model.eval()
    prompt = torch.randint(100, 150_000, (48,), generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    graphed = FastDecoder(loaded.model, capacity=512, weights="4bit")
    graphed.load_weights(loaded.model, use_adapter=True)
    tokens = list(graphed.generate(prompt, 32, Sampling(), set()))
    assert graphed.graph is not None and graphed.graph_error is None, graphed.graph_error
    cache = graphed.k_cache.numel() * graphed.k_cache.element_size() * 2
    assert torch.cuda.memory_allocated() - before < cache + 0.5 * 2**30
    eager = FastDecoder(loaded.model, capacity=512, weights="4bit")
    eager.graph_error = "eager on purpose"  # the same steps, run as they are
    eager.load_weights(loaded.model, use_adapter=True)
    assert list(eager.generate(prompt, 32, Sampling(), set())) == tokens
