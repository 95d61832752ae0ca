"""The fast decoder writes what transformers would, from the same weights, adapter on or off."""

from types import SimpleNamespace

import pytest
import torch
from conftest import quick_lora, trained_looking_adapter

from finetune.config import ModelSettings
from finetune.generate.fast_decode import (
    FastDecoder,
    Sampling,
    _next_token,
    decoder_for,
    pick_weights,
    unsupported_reason,
)
from finetune.generate.reply import GENERATE, GenerationSettings, generate_reply
from finetune.models.adapters import adapter_switched, attach_fresh_adapter

QUESTION = "What is the antidote for heparin overdose?"


@pytest.mark.slow
@pytest.mark.parametrize("use_adapter", [True, False])
def test_greedy_reply_is_the_same_as_generate(loaded, use_adapter):
    trained_looking_adapter(loaded)
    slow = generate_reply(loaded, QUESTION, GenerationSettings(max_new_tokens=40, temperature=0, fast=False),
                          use_adapter)
    fast = generate_reply(loaded, QUESTION, GenerationSettings(max_new_tokens=40, temperature=0), use_adapter)
    assert slow.decoder == GENERATE and fast.decoder.startswith("fast decoder")
    assert fast.tokens == slow.tokens == 40
    assert fast.answer == slow.answer


@pytest.mark.slow
def test_adapter_on_and_off_answer_differently_from_one_decoder(loaded):
    trained_looking_adapter(loaded)
    settings = GenerationSettings(max_new_tokens=30, temperature=0)
    tuned = generate_reply(loaded, QUESTION, settings, use_adapter=True)
    decoder = loaded.decoder
    base = generate_reply(loaded, QUESTION, settings, use_adapter=False)
    assert loaded.decoder is decoder  # the weights were rewritten in place, not copied twice
    assert base.answer != tuned.answer
    assert generate_reply(loaded, QUESTION, settings, use_adapter=True).answer == tuned.answer


def test_a_new_adapter_drops_the_decoder_so_chat_sees_the_new_weights(loaded):
    generate_reply(loaded, QUESTION, GenerationSettings(max_new_tokens=4, temperature=0))
    assert loaded.decoder is not None
    attach_fresh_adapter(loaded, quick_lora())  # what every training run does first
    assert loaded.decoder is None


def test_a_longer_conversation_gets_a_larger_cache(loaded):
    small = decoder_for(loaded, False, 100)
    assert small.capacity == 512
    assert decoder_for(loaded, False, 300) is small
    larger = decoder_for(loaded, False, 700)
    assert larger is not small and larger.capacity == 1024


def test_same_seed_same_sampled_reply(loaded):
    settings = GenerationSettings(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=11)
    first, second = (generate_reply(loaded, QUESTION, settings) for _ in range(2))
    assert first.decoder.startswith("fast decoder") and first.answer == second.answer


def tiny_model(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


@pytest.mark.parametrize("model_type,extra", [
    ("qwen2", {}),  # biases on q, k and v
    ("llama", {"rope_parameters": LLAMA3_ROPE}),  # R1-Distill-Llama's scaled RoPE
    ("llama", {"tie_word_embeddings": True}),
])
def test_logits_match_transformers_prompt_and_each_new_token(model_type, extra):
    model = tiny_model(model_type, **extra)
    if model_type == "qwen2":
        with torch.no_grad():  # random init leaves the biases at zero, which would hide a missing bias
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_()
    assert unsupported_reason(model) is None
    decoder = FastDecoder(model, capacity=64)
    decoder.load_weights(model, use_adapter=False)
    ids = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(input_ids=ids.view(1, -1)).logits[0]
        logits = [decoder.prefill(ids[:12])]
        logits += [decoder.step(ids[i].view(1), i).clone() for i in range(12, 20)]
    torch.testing.assert_close(torch.stack(logits), reference[11:20], atol=1e-4, rtol=1e-4)


def test_other_architectures_are_left_to_generate():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2))
    assert "gpt2" in unsupported_reason(model)
    assert decoder_for(SimpleNamespace(model=model, decoder=None), True, 64) is None  # chat and eval use generate


def test_sampling_rules():
    logits = torch.tensor([1.0, 3.0, 2.9, -1.0])
    nothing_seen = torch.zeros(4, dtype=torch.bool)
    assert int(_next_token(logits, Sampling(), nothing_seen)) == 1  # greedy
    narrow = Sampling(temperature=1.0, top_p=0.01)
    assert {int(_next_token(logits, narrow, nothing_seen)) for _ in range(20)} == {1}  # top-p keeps the best
    seen = torch.tensor([False, True, False, False])
    assert int(_next_token(logits, Sampling(repetition_penalty=1.2), seen)) == 2  # 3.0 / 1.2 < 2.9


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_a_batch_writes_what_each_question_alone_and_transformers_write(model_type):
    """Evaluation decodes its questions together: prompts of different lengths, a last batch smaller
    than the decoder's, and an answer that ends early must each read as if decoded alone."""
    model = tiny_model(model_type)
    alone = FastDecoder(model, capacity=64)
    alone.load_weights(model, use_adapter=False)
    together = FastDecoder(model, capacity=64, batch=4)
    together.load_weights(model, use_adapter=False)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 300, (n,), generator=generator) for n in (5, 12, 3)]  # 3 rows of 4
    with torch.inference_mode():
        expected = [model.generate(p.view(1, -1), max_new_tokens=16, min_new_tokens=16, do_sample=False)
                    [0, p.numel():].tolist() for p in prompts]
    assert together.generate_batch(prompts, 16, Sampling(), set()) == expected
    assert [list(alone.generate(p, 16, Sampling(), set())) for p in prompts] == expected
    end = expected[1][4]  # the second answer's fifth token ends it; the others go on unless they write it too
    steps = []
    ended = together.generate_batch(prompts, 16, Sampling(), {end}, on_step=lambda *s: steps.append(s))
    for answer, full in zip(ended, expected, strict=True):
        cut = full.index(end) + 1 if end in full else len(full)
        assert answer == full[:cut]
    assert steps[-1] == (max(len(a) for a in ended), sum(len(a) for a in ended))  # (steps, tokens written)


def test_a_batch_larger_than_the_decoder_is_refused():
    model = tiny_model("llama")
    decoder = FastDecoder(model, capacity=64, batch=2)
    decoder.load_weights(model, use_adapter=False)
    with pytest.raises(ValueError, match="3 prompts for a decoder of batch 2"):
        decoder.generate_batch([torch.tensor([1, 2])] * 3, 4, Sampling(), set())


def test_sampling_rules_hold_row_by_row():
    logits = torch.tensor([[1.0, 3.0, 2.9, -1.0], [4.0, 0.0, 0.0, 0.0]])
    nothing_seen = torch.zeros(2, 4, dtype=torch.bool)
    assert _next_token(logits, Sampling(), nothing_seen).view(-1).tolist() == [1, 0]
    narrow = Sampling(temperature=1.0, top_p=0.01)
    assert _next_token(logits, narrow, nothing_seen).view(-1).tolist() == [1, 0]


@pytest.mark.slow
def test_over_4bit_weights_it_writes_what_generate_writes_base_and_finetuned():
    """Where no 16-bit copy fits (Llama-8B on a 24 GB GPU), the decoder multiplies by the model's own
    4-bit weights with the adapter beside them; switching sides flips the adapter, nothing is copied."""
    from finetune.models.load import load_model

    loaded = load_model(ModelSettings(load_in_4bit=True))
    trained_looking_adapter(loaded, std=0.1)  # large enough to change the greedy answer
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the first-line treatment for community-acquired pneumonia?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"][0]
    decoder = FastDecoder(model, capacity=128, weights="4bit")
    assert "4-bit weights" in decoder.description
    answers = {}
    for use_adapter in (True, False):
        decoder.load_weights(model, use_adapter)
        with torch.inference_mode(), adapter_switched(loaded, use_adapter):
            expected = model.generate(prompt.view(1, -1), max_new_tokens=24, do_sample=False)[0, prompt.numel():]
        answers[use_adapter] = list(decoder.generate(prompt, 24, Sampling(), set()))
        assert answers[use_adapter] == expected.tolist()
    assert answers[True] != answers[False]  # the adapter counted on one side only


@pytest.mark.parametrize("room_gb,four_bit,expected", [
    (40, True, "merged"),  # room for the 16-bit copy: the fastest path
    (9, True, "4bit"),  # Llama-8B's 14 GB copy does not fit; its 4-bit weights need only the cache
    (9, False, None),  # a 16-bit model with no room for a second copy: generate
    (1, True, None),  # not even the cache fits: generate
])
def test_the_decoder_that_fits_is_chosen(room_gb, four_bit, expected):
    gb = 2**30
    assert pick_weights(int(room_gb * gb), copy_bytes=14 * gb, other_bytes=int(0.4 * gb), four_bit=four_bit) == expected
