"""Streaming generation that keeps the reasoning and the answer apart as tokens arrive.

    for reply in stream_reply(loaded, "A 45-year-old man ...", GenerationSettings()):
        print(reply.thinking, reply.answer)

Base and fine-tuned come from the same loaded model with the adapter off or on, same seed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from finetune.bounds import SEED_MAX, check_ranges, ranged
from finetune.data.prompts import build_prompt, effective_template, prompt_opens_reasoning, reasoning_tags
from finetune.data.think import split_think
from finetune.generate.fast_decode import Sampling, decoder_for
from finetune.models.adapters import adapter_switched
from finetune.models.load import LoadedModel

GENERATE = "transformers generate"
CHAT_MAX_NEW_TOKENS = {"cuda": 6144, "cpu": 768}
"""New tokens a chat reply may take, by device. R1 models reason for 1,000-4,000 tokens before they
answer: on a GPU a 4,000-token reasoning and its answer fit, with room. On CPU the embedded 135M model is
a demo: after training on the bundled sample it reasons and answers in about 650 of its tokens
(medical-o1's length), at the rate docs/benchmarks.md gives ("CPU")."""


class ModelBusy(RuntimeError):
    """The model is being trained; chat must wait until the run ends."""


class ContextTooLong(ValueError):
    """The prompt and the longest reply asked for do not fit in the model's context window."""


@dataclass
class GenerationSettings:
    """Defaults are DeepSeek's advice for R1 models: temperature 0.6, top_p 0.95, no system prompt."""

    max_new_tokens: int = ranged(CHAT_MAX_NEW_TOKENS["cuda"], 1, 131_072)
    """The reply's limit, reasoning included (`for_device` on CPU: a demo's)."""
    temperature: float = ranged(0.6, 0.0, 2.0, whole=False)
    top_p: float = ranged(0.95, 0.05, 1.0, whole=False)
    repetition_penalty: float = ranged(1.0, 1.0, 2.0, whole=False)
    seed: int = ranged(0, 0, SEED_MAX)
    system_prompt: str = ""
    template: str = "chat"
    """'chat' or 'plain': must match the template the adapter was trained with ('auto' in the app: the
    template of the latest run)."""
    fast: bool = True
    """Use the fast decoder (`finetune.generate.fast_decode`) where the model allows; False: transformers' generate."""

    def __post_init__(self) -> None:
        check_ranges(self)

    @classmethod
    def for_device(cls, device: str, **overrides) -> GenerationSettings:
        """The defaults with the device's reply length (`CHAT_MAX_NEW_TOKENS`)."""
        return cls(**{"max_new_tokens": CHAT_MAX_NEW_TOKENS["cuda" if device == "cuda" else "cpu"], **overrides})


@dataclass
class Reply:
    thinking: str
    answer: str
    thinking_done: bool
    done: bool
    tokens: int
    seconds: float
    thinking_seconds: float | None = None
    thinking_tokens: int | None = None
    """Tokens spent reasoning, once the reasoning is over."""
    stopped: bool = False
    """True when the generation was stopped by the caller before it ended."""
    decoder: str = ""
    """Which decoding path wrote the reply: the fast decoder's description or "transformers generate"."""
    phase: str = "writing"
    """Where the reply is before its first token: "waiting" for the model (another reply or an export holds
    it), "reading" the prompt (the prefill, which Stop cannot cut); then "writing". Chat panes add "queued"
    (a pane that answers after another), "not started" (stopped before its turn) and "no adapter"."""


HEARTBEAT_SECONDS = 0.5
"""With no new text for this long, `stream_reply` yields the reply as it is anyway, so a caller can show
that the model is waiting, reading the prompt, or still counting tokens (a word can take several)."""


def _counting_streamer(tokenizer):
    """A TextIteratorStreamer that also counts the tokens generated (the decoded text cannot tell)."""
    from transformers import TextIteratorStreamer  # heavy: loads on first use

    class CountingStreamer(TextIteratorStreamer):
        generated = 0

        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.generated += value.numel()
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=HEARTBEAT_SECONDS)


class StopOnEvent:
    """A stopping criterion that ends generation when the caller sets the event."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_reply(
    loaded: LoadedModel,
    question: str,
    settings: GenerationSettings | None = None,
    use_adapter: bool = True,
    stop: threading.Event | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> Iterator[Reply]:
    """Yield the reply so far after each new piece of text; the last one has done=True.

    `history`: earlier (question, answer) turns of this conversation, oldest first.
    """
    from transformers import StoppingCriteriaList  # heavy: loads on first use

    settings = settings or GenerationSettings()
    stop = stop or threading.Event()
    if loaded.job is not None and loaded.job.running:
        raise ModelBusy("The model is being trained; chat is available again when the run ends or is stopped.")
    tokenizer = loaded.tokenizer
    template = effective_template(settings.template, tokenizer)
    prompt = build_prompt(tokenizer, question, template, settings.system_prompt, history)
    open_tag, close_tag = reasoning_tags(template)
    opened = prompt_opens_reasoning(prompt, template)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
    check_room(loaded, inputs["input_ids"].shape[1], settings.max_new_tokens)
    streamer = _counting_streamer(tokenizer)
    sampling = settings.temperature > 0
    kwargs = dict(
        **inputs,
        streamer=streamer,
        max_new_tokens=settings.max_new_tokens,
        do_sample=sampling,
        temperature=settings.temperature if sampling else None,
        top_p=settings.top_p if sampling else None,
        repetition_penalty=settings.repetition_penalty,
        stopping_criteria=StoppingCriteriaList([StopOnEvent(stop)]),
        pad_token_id=tokenizer.pad_token_id,
    )
    failure: list[BaseException] = []
    used: list[str] = []
    reading = threading.Event()
    """Set once this generation holds the model: before that it waits for another reply (or an export)."""

    def generate() -> None:
        try:
            with loaded.lock, torch.inference_mode():
                reading.set()
                if stop.is_set():  # Stop pressed while waiting for the model: no prompt to read
                    streamer.end()
                    return
                torch.manual_seed(settings.seed)  # same seed for base and fine-tuned
                tokens_needed = inputs["input_ids"].shape[1] + settings.max_new_tokens
                decoder = decoder_for(loaded, use_adapter, tokens_needed) if settings.fast else None
                used.append(decoder.description if decoder else GENERATE)
                if decoder is not None:
                    _generate_fast(decoder, loaded, inputs["input_ids"][0], settings, streamer, stop)
                    return
                with adapter_switched(loaded, use_adapter):
                    loaded.model.eval()
                    loaded.model.generate(**kwargs)
        except BaseException as err:  # surfaced in the caller's thread below
            failure.append(err)
            streamer.end()

    started = time.perf_counter()
    thread = threading.Thread(target=generate, name="generate", daemon=True)
    thread.start()
    text, thinking_seconds, thinking_tokens = "", None, None

    def so_far(done: bool = False) -> Reply:
        nonlocal thinking_seconds, thinking_tokens
        split = split_think(text, opened=opened, open_tag=open_tag, close_tag=close_tag)
        if split.closed and split.thinking and thinking_seconds is None:
            thinking_seconds = round(time.perf_counter() - started, 2)
            thinking_tokens = streamer.generated
        seconds = time.perf_counter() - started
        phase = "writing" if streamer.generated or done else "reading" if reading.is_set() else "waiting"
        return Reply(split.thinking, split.answer, split.closed, done, streamer.generated,
                     round(seconds, 2) if done else seconds, thinking_seconds, thinking_tokens,
                     stopped=done and stop.is_set(), decoder=(used[0] if used else "") if done else "", phase=phase)

    try:
        reading.wait(0.05)  # a free model is taken at once: then the first word is "reading", not "waiting"
        yield so_far()  # at once, before the prompt is read: a long prompt or a busy model can take a while
        while True:
            try:
                text += next(streamer)
            except StopIteration:
                break
            except queue.Empty:  # no new text for HEARTBEAT_SECONDS: say where the reply is anyway
                if not thread.is_alive():
                    break
            yield so_far()
    except GeneratorExit:  # the caller went away (a closed page): free the model for others
        stop.set()
        raise
    thread.join()
    if failure:
        raise failure[0]
    yield so_far(done=True)


def context_limit(loaded: LoadedModel) -> int | None:
    """The most tokens, prompt and reply together, the model was built for; None when it does not say."""
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_room(loaded: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise ContextTooLong, saying what to change, when the prompt and the reply would overflow the model."""
    limit = context_limit(loaded)
    if limit is None or prompt_tokens + max_new_tokens <= limit:
        return
    if prompt_tokens >= limit:
        raise ContextTooLong(
            f"The prompt alone is {prompt_tokens:,} tokens, more than this model's limit of {limit:,} (prompt "
            "and reply together): shorten the question or start a new conversation (earlier turns are part of it)."
        )
    raise ContextTooLong(
        f"The prompt ({prompt_tokens:,} tokens) and “Max new tokens” ({max_new_tokens:,}) add up to "
        f"{prompt_tokens + max_new_tokens:,}, more than this model's limit of {limit:,}: set “Max new tokens” "
        f"to {limit - prompt_tokens:,} or less."
    )


def _generate_fast(decoder, loaded: LoadedModel, prompt: torch.Tensor, settings: GenerationSettings,
                   streamer, stop: threading.Event) -> None:
    """Feed the fast decoder's tokens to the streamer the way `generate` does (the prompt first)."""
    sampling = Sampling(settings.temperature, settings.top_p, settings.repetition_penalty)
    streamer.put(prompt.cpu())
    try:
        for token in decoder.generate(prompt, settings.max_new_tokens, sampling, eos_token_ids(loaded), stop):
            streamer.put(torch.tensor([token]))
    finally:
        streamer.end()


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    """Token ids that end a reply: the generation config's (one or a list) and the tokenizer's."""
    ids = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids])
    ids.add(loaded.tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


def generate_reply(
    loaded: LoadedModel, question: str, settings: GenerationSettings | None = None, use_adapter: bool = True
) -> Reply:
    """The finished reply, for scripts and tests."""
    *_, final = stream_reply(loaded, question, settings, use_adapter)
    return final
