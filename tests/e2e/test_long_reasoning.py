"""A 4,000-token reasoning, as R1 models write, streamed through the real chat into a real browser.

Only the model's token source is scripted: a stand-in for the fast decoder yields the tokens of a
long reasoning and an answer, so the streamer, the reasoning split, the panes, the app's handler,
Gradio and the page all run as they do for a model. Screenshots go to test-artifacts/.
"""

import re
import time

import pytest
from conftest import ROOT, serve_app
from test_browser import open_tab

from finetune.config import EVAL_MAX_NEW_TOKENS

ARTIFACTS = ROOT / "test-artifacts"
LAST_WORDS = "so the last finding settles it"
ANSWER = "Final answer: protamine sulfate reverses heparin."
VIEWPORT = {"width": 1400, "height": 1000}
ROOM = 4992
"""Max new tokens in this test: the 4,000-token reasoning and its answer fit."""


def reasoning_script(tokenizer, tokens: int = 4000) -> tuple[list[int], int]:
    """Token ids of '<think>' + a reasoning of about `tokens` tokens + '</think>' + an answer."""
    lines, count = [], 0
    while count < tokens - 20:
        line = f"Step {len(lines) + 1}: weigh finding {len(lines) + 1} against the heparin history.\n"
        lines.append(line)
        count += len(tokenizer(line, add_special_tokens=False)["input_ids"])
    reasoning = "<think>\n" + "".join(lines) + LAST_WORDS + ".\n</think>\n\n"
    ids = tokenizer(reasoning + ANSWER, add_special_tokens=False)["input_ids"]
    return ids, len(tokenizer(reasoning, add_special_tokens=False)["input_ids"])


class ScriptedDecoder:
    """What `finetune.generate.fast_decode.decoder_for` returns, writing a script instead of running a model."""

    description = "scripted stand-in for the fast decoder"

    def __init__(self, ids: list[int], seconds_per_token: float):
        self.ids, self.seconds_per_token = ids, seconds_per_token

    def generate(self, prompt, max_new_tokens, sampling, eos_ids, stop):
        for token in self.ids[:max_new_tokens]:
            if stop.is_set():
                return
            time.sleep(self.seconds_per_token)
            yield token


@pytest.fixture(scope="module")
def long_chat_app(tmp_path_factory):
    """The app with room for the reasoning by default. The CPU default (a demo's 384 tokens) is raised
    before the app is built: typing a number into the slider raced the Send click in CI."""
    import finetune.generate.reply

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(finetune.generate.reply.CHAT_MAX_NEW_TOKENS, "cpu", ROOM)
        yield from serve_app(tmp_path_factory)


@pytest.mark.slow
def test_a_4000_token_reasoning_streams_into_a_bounded_bubble_and_the_page_stays_usable(
        browser, long_chat_app, monkeypatch):
    import finetune.generate.reply
    from finetune.config import ModelSettings

    url, workspace = long_chat_app
    workspace.load(ModelSettings())
    ids, reasoning_tokens = reasoning_script(workspace.loaded.tokenizer)
    monkeypatch.setattr(finetune.generate.reply, "decoder_for",
                        lambda loaded, use_adapter, tokens_needed: ScriptedDecoder(ids, 0.003))
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url, wait_until="load")
    page.wait_for_selector("#model-status:has-text('Parameters')")

    open_tab(page, "Chat")
    page.locator("#question textarea").fill("What reverses heparin?")
    page.locator("#send").click()
    bubble = page.locator("#chat-base .thought-group").first
    spinner = bubble.locator(".loading-spinner")
    spinner.wait_for(timeout=60_000)  # reasoning, still going

    # Mid-stream the page answers: typing, and a tab whose line comes from the server.
    began = time.perf_counter()
    page.locator("#question textarea").fill("And the dose?")
    open_tab(page, "Evaluate")
    page.wait_for_selector("#eval-estimate:has-text('on this machine')")
    estimate = page.inner_text("#eval-estimate")
    open_tab(page, "Chat")
    page.wait_for_function("() => document.querySelector('#question textarea').value === 'And the dose?'")
    responded = time.perf_counter() - began
    assert spinner.count() == 1, "the stream ended before the page was tried: make it longer"
    assert "guessed from the model's size" in estimate
    assert f"8 questions × 1 model × up to {EVAL_MAX_NEW_TOKENS['cpu']} tokens" in estimate
    # While it streams, the growing reasoning scrolls inside a bounded bubble.
    page.wait_for_function("""() => { const c = document.querySelector('#chat-base .thought-group > .content');
                                      return c && c.scrollHeight > 2 * c.clientHeight; }""")
    assert bubble.bounding_box()["height"] < 0.6 * VIEWPORT["height"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "long-reasoning-streaming.png"))

    # The end: the bubble closed with its length and time, the answer apart from it and in view.
    answer = page.locator("#chat-base [data-testid='bot']", has_text=ANSWER)
    answer.wait_for(timeout=120_000)
    spinner.wait_for(state="detached")
    title = bubble.locator(".title").inner_text()
    shown_tokens = int(re.search(r"([\d,]+) tokens", title).group(1).replace(",", ""))
    assert "Reasoning" in title and re.search(r"\(\d+(\.\d)?s\)", title)
    assert abs(shown_tokens - reasoning_tokens) <= 2 and shown_tokens > 3900
    assert bubble.bounding_box()["height"] < 0.6 * VIEWPORT["height"]  # closed, it is one line
    assert answer.count() == 1 and bubble.locator("text=" + ANSWER).count() == 0
    bubble.locator(".title").click()  # open it again: every token is there, in a scrolling box
    content = bubble.locator(":scope > .content")
    content.wait_for()
    assert LAST_WORDS in content.inner_text() and "Step 1:" in content.inner_text()
    box = bubble.bounding_box()
    assert box["height"] < 0.6 * VIEWPORT["height"]
    # Opening animates (Gradio hides the overflow until it has grown): wait for the box to settle.
    page.wait_for_function("""() => { const c = document.querySelector('#chat-base .thought-group > .content');
                                      return getComputedStyle(c).overflowY === 'auto'
                                             && c.scrollHeight > 5 * c.clientHeight; }""")
    answer.scroll_into_view_if_needed()
    answer_box, pane_box = answer.bounding_box(), page.locator("#chat-base").bounding_box()
    assert answer.is_visible() and answer_box["y"] >= box["y"] + box["height"] - 1
    assert answer_box["y"] + answer_box["height"] <= pane_box["y"] + pane_box["height"] + 1
    assert re.search(r"Base: \d+ tokens in [\d.]+ s", page.inner_text("#chat-status"))
    page.screenshot(path=str(ARTIFACTS / "long-reasoning-done.png"))

    # The Evaluate tab now reckons with the speed just measured, and follows the sample and the length.
    open_tab(page, "Evaluate")
    page.wait_for_selector("#eval-estimate:has-text('measured in chat')")
    for label, value, shown in (("Sample size (first N questions)", "4", "4 questions"),
                                ("Max new tokens per answer", "1024", "up to 1,024 tokens")):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Enter")
        page.wait_for_selector(f"#eval-estimate:has-text('{shown}')")
    print(f"page answered mid-stream in {responded:.2f} s; estimate: {page.inner_text('#eval-estimate')}")
    context.close()
