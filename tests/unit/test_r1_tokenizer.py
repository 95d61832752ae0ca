"""The real DeepSeek-R1-Distill-Qwen tokenizer: one medical-o1 row pinned token for token as a run trains
on it (one BOS, prompt masked, reasoning + </think> + answer + eos trained, eos never taken for padding,
through TRL's collator too), both chat template versions, the reply parsed back as chat streams it, the
multi-turn prompt, the Dataset preview; and a GGUF export carrying the tokenizer metadata llama.cpp wrote
in a real R1-Distill-Qwen-7B file.

The tokenizer and the GGUF header are read from ../shared/data (never copied into the project)."""

import copy
import json
import shutil

import gguf
import pytest
import torch
from conftest import R1_TOKENIZER, REAL_GGUF, ROOT, SHARED_SAMPLE, needs_shared, quick_train

from finetune.config import DataSettings
from finetune.data.prompts import (
    IGNORE_INDEX,
    build_prompt,
    prompt_opens_reasoning,
    tokenize_example,
    tokenize_examples,
)
from finetune.data.sources import map_columns
from finetune.models.load import _ensure_pad_token
from finetune.models.tokenizer_check import checked_tokenizer
from ui.preview import preview_dataset, read_upload

pytestmark = needs_shared(R1_TOKENIZER, REAL_GGUF, SHARED_SAMPLE)

BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"
BOS_ID, EOS_ID, THINK_ID, THINK_CLOSE_ID, PAD_ID = 151646, 151643, 151648, 151649, 151654
VOCAB_SIZE = 151936  # the 1.5B's embedding rows (the 7B has 152064): every tokenizer id fits


@pytest.fixture(scope="session")
def r1_dir(tmp_path_factory):
    """A model folder as the Hub ships one, without weights: the 1.5B's config + the real tokenizer files."""
    folder = tmp_path_factory.mktemp("r1-distill-qwen")
    shutil.copy(ROOT / "configs" / "deepseek-r1-distill-qwen-1.5b.json", folder / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copy(R1_TOKENIZER / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def r1_tokenizer(r1_dir):
    """Loaded as the app loads a model's tokenizer (models._load_hf, the round-trip check, the pad check)."""
    from transformers import AutoTokenizer

    tokenizer, check = checked_tokenizer(AutoTokenizer.from_pretrained(r1_dir), str(r1_dir))
    assert check.round_trips and not check.repaired  # under a Qwen2 config it loads right as it is
    _ensure_pad_token(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def r1_gguf_template_tokenizer(r1_tokenizer):
    """The same tokenizer with the earlier template (the generation prompt does not open <think>)."""
    tokenizer = copy.deepcopy(r1_tokenizer)
    tokenizer.chat_template = (R1_TOKENIZER / "chat_template_gguf.jinja").read_text()
    return tokenizer


@pytest.fixture(scope="session")
def raw_row() -> dict:
    return json.loads(SHARED_SAMPLE.read_text(encoding="utf-8").splitlines()[0])


@pytest.fixture(scope="session")
def example(raw_row):
    """The row as a run reads it (upload checks, column detection)."""
    rows = map_columns(read_upload(SHARED_SAMPLE), {})
    assert rows.mapping.as_dict() == {"question": "Question", "reasoning": "Complex_CoT", "answer": "Response"}
    return rows.examples[0]


@pytest.fixture(scope="session")
def tiny_r1_model():
    """A random Qwen2 with the 1.5B's settings and vocabulary, 2 layers of 64: seconds to build and export."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    settings = json.loads((ROOT / "configs" / "deepseek-r1-distill-qwen-1.5b.json").read_text())
    settings.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_window_layers=2)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**settings)).eval()


def trained_part(row) -> tuple[list[int], list[int]]:
    """(ids, labels) from the first trained position on; everything before it is checked to be masked."""
    start = next(i for i, label in enumerate(row.labels) if label != IGNORE_INDEX)
    assert row.labels[:start] == [IGNORE_INDEX] * start
    return row.input_ids[start:], row.labels[start:]


# --- 4. The training text, token for token -------------------------------------------------------------


def test_one_bos_written_by_the_template_and_no_second(r1_tokenizer, example):
    row = tokenize_example(r1_tokenizer, example, "chat", max_length=4096)
    assert r1_tokenizer.bos_token == BOS and r1_tokenizer.bos_token_id == BOS_ID
    assert row.prompt.startswith(BOS + USER) and row.prompt.count(BOS) == 1
    assert row.input_ids[0] == BOS_ID and row.input_ids.count(BOS_ID) == 1
    # The tokenizer does add a BOS of its own (add_bos_token: true): tokenizing with special tokens would
    # have made two, which is why formats tokenizes with add_special_tokens=False.
    assert r1_tokenizer(row.prompt).input_ids[:2] == [BOS_ID, BOS_ID]


def test_prompt_masked_reasoning_answer_and_eos_trained(r1_tokenizer, example, raw_row):
    row = tokenize_example(r1_tokenizer, example, "chat", max_length=4096)
    expected_prompt = f"{BOS}{USER}{raw_row['Question']}{ASSISTANT}<think>\n"
    expected_completion = f"{raw_row['Complex_CoT']}\n</think>\n\n{raw_row['Response']}{EOS}"
    assert row.prompt == expected_prompt and row.completion == expected_completion
    assert not row.truncated

    prompt_ids = r1_tokenizer(expected_prompt, add_special_tokens=False).input_ids
    assert row.input_ids[:len(prompt_ids)] == prompt_ids
    assert row.labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    ids, labels = trained_part(row)
    assert len(ids) == len(row.input_ids) - len(prompt_ids) and labels == ids
    assert r1_tokenizer.decode(ids) == expected_completion
    # Tokenized in two pieces, the row is the very tokens of the whole text: nothing shifts at the seam.
    assert row.input_ids == r1_tokenizer(expected_prompt + expected_completion, add_special_tokens=False).input_ids

    tokens = r1_tokenizer.convert_ids_to_tokens(row.input_ids)
    assert tokens[:10] == [BOS, USER, "A", "Ġ", "4", "5", "-year", "-old", "Ġhomeless", "Ġman"]
    assert tokens[len(prompt_ids) - 4:len(prompt_ids)] == ["?", ASSISTANT, "<think>", "Ċ"]  # Ċ: "\n"
    assert row.input_ids[len(prompt_ids) - 2:len(prompt_ids)] == [THINK_ID, 198]
    assert ids.count(THINK_CLOSE_ID) == 1 and THINK_ID not in ids and ids.count(EOS_ID) == 1
    assert ids[-1] == EOS_ID and labels[-1] == EOS_ID
    close = ids.index(THINK_CLOSE_ID)
    assert r1_tokenizer.decode(ids[:close]) == raw_row["Complex_CoT"] + "\n"
    assert r1_tokenizer.decode(ids[close + 1:-1]) == "\n\n" + raw_row["Response"]
    assert r1_tokenizer.decode(row.input_ids) == expected_prompt + expected_completion  # spaces, newlines intact


def test_think_tags_are_single_tokens(r1_tokenizer):
    assert r1_tokenizer.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK_ID, THINK_CLOSE_ID]
    assert r1_tokenizer("<think>\nx\n</think>", add_special_tokens=False).input_ids[0] == THINK_ID
    assert THINK_CLOSE_ID in r1_tokenizer("x\n</think>\n\ny", add_special_tokens=False).input_ids
    # Not special: a stream decoded with skip_special_tokens keeps them, so the reply can be split.
    assert r1_tokenizer.decode([THINK_ID, 87, THINK_CLOSE_ID], skip_special_tokens=True) == "<think>x</think>"


def test_pad_is_not_eos_even_when_the_config_pads_with_eos(r1_dir, r1_tokenizer):
    from transformers import AutoTokenizer

    assert r1_tokenizer.pad_token == "<|vision_pad|>" and r1_tokenizer.pad_token_id == PAD_ID != EOS_ID
    # A tokenizer_config that pads with eos: the pad check picks a reserved token, not Qwen's ordinary
    # text token "<unk>" (id 128244), which it used to.
    padded_with_eos = AutoTokenizer.from_pretrained(r1_dir, pad_token=EOS)
    _ensure_pad_token(padded_with_eos)
    assert padded_with_eos.pad_token_id == PAD_ID


def test_eos_label_survives_trl_s_collator(r1_tokenizer, tiny_r1_model, tmp_path):
    """The batches the trainer really builds: each row's eos is trained, padding is not."""
    from finetune.train.trainer import ReasoningSFTTrainer, build_sft_config

    examples = map_columns(read_upload(SHARED_SAMPLE), {}).examples[:2]
    prepared = tokenize_examples(r1_tokenizer, examples, "chat", max_length=4096)
    assert len({len(row.input_ids) for row in prepared.rows}) == 2  # one row is padded
    args = build_sft_config(quick_train(max_steps=1, micro_batch_size=2), 4096, tmp_path, "cpu", 1)
    trainer = ReasoningSFTTrainer(model=tiny_r1_model, args=args, train_dataset=prepared.to_hf_dataset(),
                                  processing_class=r1_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    rows = {tuple(row.input_ids): row for row in prepared.rows}
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                 batch["attention_mask"].tolist(), strict=True):
        n = sum(mask)
        row = rows[tuple(ids[:n])]  # the sampler shuffles: find the row by its tokens
        assert labels[:n] == row.labels and ids[n - 1] == EOS_ID and labels[n - 1] == EOS_ID
        assert ids[n:] == [PAD_ID] * (len(ids) - n) and labels[n:] == [IGNORE_INDEX] * (len(ids) - n)


def test_earlier_template_completion_opens_the_block(r1_gguf_template_tokenizer, example, raw_row):
    tokenizer = r1_gguf_template_tokenizer
    row = tokenize_example(tokenizer, example, "chat", max_length=4096)
    assert row.prompt == f"{BOS}{USER}{raw_row['Question']}{ASSISTANT}"
    ids, labels = trained_part(row)
    assert labels == ids and ids[:2] == [THINK_ID, 198] and ids[-1] == EOS_ID
    assert ids.count(THINK_ID) == 1 and ids.count(THINK_CLOSE_ID) == 1 and row.input_ids.count(BOS_ID) == 1
    assert tokenizer.decode(ids) == f"<think>\n{raw_row['Complex_CoT']}\n</think>\n\n{raw_row['Response']}{EOS}"


@pytest.mark.parametrize("template", ["current", "earlier"])
def test_a_streamed_reply_splits_into_reasoning_and_answer(template, r1_tokenizer, r1_gguf_template_tokenizer,
                                                           example, raw_row):
    """The trained completion, streamed back as chat streams a reply (skip_prompt, skip_special_tokens)."""
    from finetune.data.think import split_think
    from finetune.generate.chat import conversation, reply_messages
    from finetune.generate.reply import Reply, _counting_streamer

    tokenizer = r1_tokenizer if template == "current" else r1_gguf_template_tokenizer
    row = tokenize_example(tokenizer, example, "chat", max_length=4096)
    opened = prompt_opens_reasoning(row.prompt, "chat")
    assert opened == (template == "current")
    prompt_length = row.labels.count(IGNORE_INDEX)
    streamer = _counting_streamer(tokenizer)
    streamer.put(torch.tensor([row.input_ids[:prompt_length]]))  # generate's first put: the prompt, skipped
    for token in row.input_ids[prompt_length:]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    text, seen_closed = "", False
    for piece in streamer:  # the first piece is "" (the streamer holds "<think>" back until it is whole)
        text += piece
        split = split_think(text, opened=opened)
        if not text:
            continue  # nothing shown yet: split_think calls it closed, and the chat panes show nothing
        if not split.closed:  # still reasoning: no answer yet, and nothing of the tag shown
            assert not seen_closed and split.answer == "" and raw_row["Complex_CoT"].startswith(split.thinking)
            assert "<think>" not in split.thinking
        seen_closed = split.closed
    assert streamer.generated == len(row.input_ids) - prompt_length
    assert split_think(text, opened=opened) == (raw_row["Complex_CoT"].strip(), raw_row["Response"].strip(), True)

    shown = reply_messages(Reply(split.thinking, split.answer, True, True, streamer.generated, 1.0))
    assert [m["content"] for m in shown] == [raw_row["Complex_CoT"].strip(), raw_row["Response"].strip()]
    assert conversation([{"role": "user", "content": example.question}, *shown]) == [
        (example.question, raw_row["Response"].strip())]


def test_multi_turn_prompt_sends_earlier_answers_not_their_reasoning(r1_tokenizer, example, raw_row):
    from finetune.generate.chat import conversation

    panes = [{"role": "user", "content": example.question},
             {"role": "assistant", "content": raw_row["Complex_CoT"], "metadata": {"title": "Reasoning"}},
             {"role": "assistant", "content": raw_row["Response"]}]
    follow_up = "What is the first treatment?"
    prompt = build_prompt(r1_tokenizer, follow_up, "chat", history=conversation(panes))
    assert prompt == (f"{BOS}{USER}{raw_row['Question']}{ASSISTANT}{raw_row['Response']}{EOS}"
                      f"{USER}{follow_up}{ASSISTANT}<think>\n")
    # An answer that still carries its reasoning block: the R1 template drops what comes before </think>.
    with_block = [(example.question, f"<think>\n{raw_row['Complex_CoT']}\n</think>\n\n{raw_row['Response']}")]
    assert raw_row["Complex_CoT"][:40] not in build_prompt(r1_tokenizer, follow_up, "chat", history=with_block)
    ids = r1_tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids.count(BOS_ID) == 1 and ids.count(EOS_ID) == 1 and THINK_CLOSE_ID not in ids


def test_dataset_preview_shows_the_text_with_its_spaces(r1_tokenizer, raw_row):
    shown = preview_dataset(read_upload(SHARED_SAMPLE), DataSettings(), r1_tokenizer, max_length=4096)
    (prompt, untrained), (completion, trained) = shown.segments
    assert not untrained and trained
    assert prompt == f"{BOS}{USER}{raw_row['Question']}{ASSISTANT}<think>\n"
    assert "A 45-year-old homeless man presents to the emergency department" in prompt
    assert completion == f"{raw_row['Complex_CoT']}\n</think>\n\n{raw_row['Response']}{EOS}"
    assert shown.stats.rows == len(read_upload(SHARED_SAMPLE).rows) and shown.stats.truncated == 0


# --- 5. A GGUF export carries what llama.cpp wrote for this tokenizer -----------------------------------


@pytest.fixture(scope="module")
def real_gguf():
    """The real llama.cpp file's header: GGUFReader reads a file with no tensors as it is."""
    reader = gguf.GGUFReader(REAL_GGUF)
    assert len(reader.tensors) == 0
    return reader


@pytest.fixture(scope="module")
def exported_gguf(r1_tokenizer, tiny_r1_model, tmp_path_factory):
    from finetune.export.gguf import write_gguf

    path = tmp_path_factory.mktemp("r1-gguf") / "model-f16.gguf"
    write_gguf(path, tiny_r1_model.state_dict(), tiny_r1_model.config, r1_tokenizer, "gguf_f16", "tiny R1 Qwen")
    return gguf.GGUFReader(path)


def value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents() if key in reader.fields else None


def first_difference(ours: list, theirs: list) -> str:
    index = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    return f"first difference at {index}: {ours[index]!r} vs {theirs[index]!r}" if index is not None else "none"


def test_pre_tokenizer_is_named_by_llama_cpp_s_check_hash(r1_dir):
    from transformers import AutoTokenizer

    from finetune.export.gguf import tokenizer_pre

    tokenizer = AutoTokenizer.from_pretrained(r1_dir)
    assert tokenizer_pre(tokenizer, None) == "deepseek-r1-qwen"
    # The same vocabulary and split without the BOS is Qwen2's own tokenizer to llama.cpp.
    tokenizer.add_bos_token = False
    assert tokenizer("x").input_ids == [87] and tokenizer_pre(tokenizer, None) == "qwen2"


def test_a_tokenizer_transformers_broke_is_refused_and_the_repaired_one_named(r1_dir, tmp_path):
    """This tokenizer under a Llama config loads through LlamaTokenizer, which drops every space
    (tokenizer_check): its check hash is no known one, and Metaspace is no llama.cpp split. The app's
    repair gives back the very tokenizer, which llama.cpp knows by its hash."""
    from transformers import AutoTokenizer

    from finetune.export.gguf import GGUFExportError, tokenizer_pre

    shutil.copytree(r1_dir, tmp_path / "llama", ignore=shutil.ignore_patterns("config.json"))
    shutil.copy(ROOT / "configs" / "deepseek-r1-distill-llama-8b.json", tmp_path / "llama" / "config.json")
    broken = AutoTokenizer.from_pretrained(tmp_path / "llama")
    assert broken.convert_ids_to_tokens(broken("A 45-year-old", add_special_tokens=False).input_ids) == [
        "A", "4", "5", "-year", "-old"]
    spec = json.loads(broken.backend_tokenizer.to_str())["pre_tokenizer"]
    with pytest.raises(GGUFExportError, match="Metaspace"):
        tokenizer_pre(broken, spec)
    repaired, check = checked_tokenizer(broken, str(tmp_path / "llama"))
    assert check.repaired and tokenizer_pre(repaired, json.loads(repaired.backend_tokenizer.to_str())[
        "pre_tokenizer"]) == "deepseek-r1-qwen"


@pytest.mark.slow
@pytest.mark.parametrize("key", ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                                 "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                                 "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"])
def test_gguf_tokenizer_settings_match_llama_cpp_s(exported_gguf, real_gguf, key):
    assert value(exported_gguf, key) == value(real_gguf, key)


def test_gguf_tokens_types_and_merges_match_llama_cpp_s(exported_gguf, real_gguf):
    assert {k for k in exported_gguf.fields if k.startswith("tokenizer.")} == {
        k for k in real_gguf.fields if k.startswith("tokenizer.")}
    merges = value(exported_gguf, "tokenizer.ggml.merges")
    assert merges == value(real_gguf, "tokenizer.ggml.merges"), first_difference(merges, value(real_gguf,
                                                                                             "tokenizer.ggml.merges"))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        ours, theirs = value(exported_gguf, key), value(real_gguf, key)
        # One entry per embedding row: the 7B has 128 rows more than our 1.5B-sized model, all unused pads.
        assert len(ours) == VOCAB_SIZE and len(theirs) == 152064
        assert ours == theirs[:VOCAB_SIZE], first_difference(ours, theirs)
    tokens, types = value(real_gguf, "tokenizer.ggml.tokens"), value(real_gguf, "tokenizer.ggml.token_type")
    assert tokens[VOCAB_SIZE:] == [f"[PAD{i}]" for i in range(VOCAB_SIZE, 152064)]
    assert set(types[VOCAB_SIZE:]) == {gguf.TokenType.UNUSED}
    # The types, as llama.cpp gives them: added special tokens CONTROL, <think> and friends USER_DEFINED.
    assert types[EOS_ID] == types[BOS_ID] == types[PAD_ID] == gguf.TokenType.CONTROL
    assert [tokens[i] for i, kind in enumerate(types) if kind == gguf.TokenType.USER_DEFINED] == [
        "<think>", "</think>", "<tool_call>", "</tool_call>"]


def test_gguf_chat_template_is_the_tokenizer_s(exported_gguf, real_gguf, r1_tokenizer):
    """The file carries the template the model was trained with. The 7B file carries the earlier one
    (before DeepSeek's generation prompt opened the <think> block): the same template but for that."""
    ours, theirs = value(exported_gguf, "tokenizer.chat_template"), value(real_gguf, "tokenizer.chat_template")
    assert ours == r1_tokenizer.chat_template == (R1_TOKENIZER / "chat_template.jinja").read_text()
    assert theirs == (R1_TOKENIZER / "chat_template_gguf.jinja").read_text()
    assert ours.replace(f"{{{{'{ASSISTANT}<think>\\n'}}}}", f"{{{{'{ASSISTANT}'}}}}") == theirs
