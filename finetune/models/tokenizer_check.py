"""Never trust a loaded tokenizer: check that it round-trips text, and repair the one known trap.

The trap (transformers 5.17.0): a folder whose tokenizer_config.json names `LlamaTokenizerFast` over a
ByteLevel BPE `tokenizer.json` (every DeepSeek-R1-Distill-Llama repo, and the R1 tokenizer files
themselves) loads through `LlamaTokenizer`, which swaps the file's ByteLevel pre-tokenizer for
Metaspace: every space, newline and CJK character is dropped ("A 45-year-old man" becomes
`A45-year-oldman`). Training on that text teaches the model to write without spaces. transformers
special-cases only `deepseek-ai/deepseek-r1-distill-llama-*` by name (huggingface/transformers#45488).

The repair loads the folder's `tokenizer.json` as it is, through the generic tokenizers backend
(`PreTrainedTokenizerFast`): its own normalizer, pre-tokenizer, decoder and post-processor, with the
special tokens, `add_bos_token` and chat template of tokenizer_config.json. Saved again, it writes
`tokenizer_class: TokenizersBackend`, which every later load (an export, a run folder) reads right.
"""

from __future__ import annotations

from dataclasses import dataclass

# Spaces (single, double, leading), a newline and a tab, digits and punctuation, the reasoning tags,
# accented Latin and CJK: each was lost by some broken tokenizer.
PROBE = "A 45-year-old man  has fever 38.5 °C\nand\ttachycardia. <think>Sepsis?</think> Answer: 发热 (fièvre)."


class TokenizerError(RuntimeError):
    """A tokenizer that changes text and cannot be repaired; the message names the problem."""


@dataclass(frozen=True)
class TokenizerCheck:
    """What the check found: `repaired` says whether the loaded tokenizer was replaced, and why."""

    round_trips: bool
    repaired: bool = False
    note: str = ""


def round_trip(tokenizer, text: str = PROBE) -> str:
    """`text` encoded without special tokens and decoded again; equal to `text` for a sound tokenizer."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def checked_tokenizer(tokenizer, path: str, token: str | None = None) -> tuple[object, TokenizerCheck]:
    """(a tokenizer that round-trips, what was found); raises TokenizerError where none can be had.

    `path` is the model folder (or Hub repo id) the tokenizer came from: its tokenizer.json is the
    repair's source. The messages name no path: the caller says which model."""
    broken = round_trip(tokenizer)
    if broken == PROBE:
        return tokenizer, TokenizerCheck(round_trips=True)
    repaired = _from_tokenizer_json(path, token)
    if repaired is None:
        raise TokenizerError(
            f"the tokenizer does not give back the text it encodes ({PROBE[:24]!r} decodes as "
            f"{broken[:24]!r}) and the model has no tokenizer.json to load instead; training on it would "
            "teach the model broken text"
        )
    still_broken = round_trip(repaired)
    if still_broken != PROBE:
        raise TokenizerError(
            "the tokenizer does not give back the text it encodes, loaded either way "
            f"({PROBE[:24]!r} decodes as {still_broken[:24]!r}); training on it would teach the model "
            "broken text"
        )
    _keep_settings(repaired, tokenizer)
    note = (f"repaired: it loaded as {type(tokenizer).__name__}, which gave {PROBE[:17]!r} back as "
            f"{broken[:15]!r}; its tokenizer.json is used as it is instead")
    return repaired, TokenizerCheck(round_trips=True, repaired=True, note=note)


def _from_tokenizer_json(path: str, token: str | None):
    """The folder's tokenizer.json through the generic tokenizers backend, or None without one."""
    from transformers import PreTrainedTokenizerFast  # heavy: loads on first use

    try:
        return PreTrainedTokenizerFast.from_pretrained(path, token=token)
    except (OSError, ValueError, TypeError):
        return None  # no tokenizer.json (a SentencePiece-only repo): nothing faithful to load


def _keep_settings(repaired, loaded) -> None:
    """What the broken load did read right from tokenizer_config.json, kept on the repair: the padding
    side, and a chat template the repair did not find (one set on the tokenizer rather than in a file)."""
    repaired.padding_side = loaded.padding_side
    if not getattr(repaired, "chat_template", None) and getattr(loaded, "chat_template", None):
        repaired.chat_template = loaded.chat_template
