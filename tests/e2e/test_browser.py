"""The app in a real browser (headless Debian Chromium through Playwright), as a visitor uses it.

Screenshots of each tab are saved under test-artifacts/ for a person to look at.
"""

import json
import os
import re
from pathlib import Path

import pytest
from conftest import CHROMIUM, ROOT

from finetune.config import TEMPLATE_LABELS
from finetune.data.sources import MCQ_FILE, SAMPLE_FILE

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end

ARTIFACTS = ROOT / "test-artifacts"

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):  # CI installs it: there, a missing browser fails
    pytest.skip("Debian's chromium is not installed (apt install chromium)", allow_module_level=True)


@pytest.fixture
def page(browser, app_server):
    """A fresh visitor on the app's first screen."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_server[0], wait_until="load")
    page.wait_for_selector("#model-status")
    yield page
    context.close()


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def shoot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def load_embedded(page):
    open_tab(page, "Model")
    page.get_by_role("button", name="Load model").click()
    # A page that opens on a loaded model already reads "Parameters": wait for this load's own end,
    # when Gradio hides the status' progress overlay again (it shows from the click on).
    page.wait_for_selector("#model-status .wrap.hide", state="attached", timeout=120_000)
    page.wait_for_selector("#model-status:has-text('Parameters')")


def wait_for_status(page, element_id, *texts, timeout=180_000):
    """Wait until the status shows one of the texts; if it never does, fail saying what it shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    selector = ", ".join(f"#{element_id}:has-text('{text}')" for text in texts)
    try:
        page.wait_for_selector(selector, timeout=timeout)
    except PlaywrightTimeout:
        shoot(page, f"timeout-{element_id}")
        shown = page.inner_text(f"#{element_id}")
        raise AssertionError(f"#{element_id} never showed {texts}; it reads: {shown!r}") from None


def upload(page, path):
    open_tab(page, "Dataset")
    page.get_by_label("Upload a file").check()
    page.locator("#dataset-upload input[type=file]").set_input_files(str(path))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_bad_input_gets_a_visible_message_and_the_app_keeps_answering(page, tmp_path):
    # Start with no model.
    open_tab(page, "Train")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector("#train-status:has-text('No model loaded: load one in the Model tab first')")

    # A wrong file type, then a file with a missing column.
    notes = tmp_path / "notes.txt"
    notes.write_text("fever and rash")
    upload(page, notes)
    page.get_by_text(re.compile(r"(unsupported file type|Invalid file type)")).first.wait_for()
    no_answer = write_jsonl(tmp_path / "no_answer.jsonl", [{"Question": "Fever?", "Complex_CoT": "Think."}])
    page.locator("#dataset-upload").get_by_label("Clear").click()
    page.locator("#dataset-upload input[type=file]").set_input_files(str(no_answer))
    page.wait_for_selector("#dataset-status:has-text('no_answer.jsonl: missing column for the answer')")
    shoot(page, "bad-input-dataset")

    # Start with a model but no usable dataset: it says the upload was refused, and why; the app still
    # loads models and answers.
    load_embedded(page)
    open_tab(page, "Train")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector("#train-status:has-text('The dataset picked in the Dataset tab was refused: "
                           "no_answer.jsonl: missing column for the answer')")
    shoot(page, "bad-input-train")


def test_load_upload_train_stop_and_chat_base_vs_fine_tuned(page, tmp_path):
    load_embedded(page)
    shoot(page, "1-model")

    rows = [json.loads(line) for line in SAMPLE_FILE.read_text().splitlines()[:12]]
    upload(page, write_jsonl(tmp_path / "twelve_cases.jsonl", rows))
    page.wait_for_selector("#dataset-status:has-text('twelve_cases.jsonl')")
    # The seeds' ### template: its prompt ends inside "### Thinking Process:", so every reply opens in a
    # reasoning bubble, the base model's too.
    page.get_by_label("### Question / ### Thinking Process / ### Clinical Assessment").check()
    page.wait_for_selector("#training-text:has-text('### Thinking Process:')")
    shoot(page, "2-dataset")

    open_tab(page, "Train")
    page.get_by_label("Max steps").fill("200")
    page.get_by_role("button", name="Start training").click()
    raw_points = page.locator('#loss-plot [aria-roledescription="point"][aria-label*="curve: raw"]')
    page.wait_for_function(
        """() => document.querySelectorAll('#loss-plot [aria-roledescription="point"][aria-label*="curve: raw"]')
                 .length >= 2""",
        timeout=180_000,
    )
    first_count = raw_points.count()
    page.wait_for_function(
        f"""() => document.querySelectorAll('#loss-plot [aria-roledescription="point"][aria-label*="curve: raw"]')
                  .length > {first_count}""",
        timeout=120_000,
    )
    assert re.search(r"Training: step \d+/200 · loss [\d.]+ · [\d,]+ tokens/s · ETA", page.inner_text("#train-status"))
    shoot(page, "3-train-running")
    # A reloaded page re-attaches to the run and redraws its whole history.
    seen = raw_points.count()
    page.reload(wait_until="load")
    page.wait_for_selector("#model-status:has-text('Parameters')")
    open_tab(page, "Train")
    page.wait_for_function(
        f"""() => document.querySelectorAll('#loss-plot [aria-roledescription="point"][aria-label*="curve: raw"]')
                  .length > {seen}""",
        timeout=120_000,
    )
    # ... and its form shows the run's own settings, not the defaults.
    assert page.get_by_label("Max steps").input_value() == "200"
    assert page.get_by_label("Run name (a folder in the app's output folder)").input_value().startswith("run-")
    page.get_by_role("button", name="Stop").first.click()
    wait_for_status(page, "train-status", "Stopped at step")
    assert "adapter saved to" in page.inner_text("#train-status")
    # The stopped run is offered to resume at once, without a reload or another tab.
    page.get_by_text("Resume a stopped or interrupted run").click()
    page.wait_for_function("() => document.querySelector('#resume-run input')?.value.includes('stopped at step')")
    # The log box shows its newest line: the box holds as many lines as the log keeps.
    log = page.locator("#train-log textarea")
    assert "adapter saved to run-" in log.input_value()  # the run's folder by its name, not the server's path
    assert log.evaluate("box => box.scrollHeight <= box.clientHeight + 2 || "
                        "box.scrollTop + box.clientHeight >= box.scrollHeight - 2")
    shoot(page, "4-train-stopped")

    open_tab(page, "Chat")
    assert page.get_by_text("Never use an output to diagnose").count() == 1  # the banner once, above the tabs
    # The fine-tuned pane names the run whose adapter answers.
    assert page.locator("#chat-tuned").get_by_text("Fine-tuned: run-").count() >= 1
    page.get_by_text("Generation settings").click()
    tokens = page.locator("#max-new-tokens input[type=number]")
    tokens.fill("32")
    tokens.press("Enter")
    page.locator("#question textarea").fill("What is the antidote for heparin?")
    page.locator("#send").click()
    for pane in ("#chat-base", "#chat-tuned"):
        bubble = page.locator(f"{pane} .thought-group")
        bubble.first.wait_for(timeout=120_000)
        assert "Reasoning" in bubble.first.inner_text()
        # The final message of the pane sits apart from the bubble: the answer or why there is none.
        page.wait_for_function(
            f"""() => [...document.querySelectorAll('{pane} [data-testid="bot"]')]
                      .some(m => !m.querySelector('.thought-group') && m.innerText.trim().length > 0)""",
            timeout=120_000,
        )
    page.locator("#send").wait_for(state="visible")
    shoot(page, "5-chat")


def test_evaluate_tab_shows_the_figures_and_each_question(page):
    load_embedded(page)
    open_tab(page, "Evaluate")
    # Before any run the per-question table already names its columns (not "1 2 3").
    assert "Question" in page.inner_text("#eval-questions") and "Gold" in page.inner_text("#eval-questions")
    page.wait_for_selector("#published:has-text('not measured here')")  # published figures, labelled
    for label, value in (("Sample size (first N questions)", "2"), ("Max new tokens per answer", "16")):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Enter")
    page.locator("#run-eval").click()
    wait_for_status(page, "eval-status", "Done. 2 questions from clinical_mcq.jsonl")
    table = page.inner_text("#eval-table")
    assert "Multiple-choice accuracy" in table and "Format" in table
    questions = [json.loads(line)["question"] for line in MCQ_FILE.read_text().splitlines()[:3]]
    shown = page.inner_text("#eval-questions")
    assert questions[0][:40] in shown and questions[1][:40] in shown and questions[2][:40] not in shown
    assert "Question 1." in page.inner_text("#eval-detail") and "Gold answer" in page.inner_text("#eval-detail")
    pick = page.locator("#eval-pick input[type=number]")
    pick.fill("2")
    pick.press("Enter")
    page.wait_for_selector("#eval-detail:has-text('Question 2.')")
    shoot(page, "6-evaluate")


def test_the_stopped_run_is_offered_to_resume_and_the_adapter_exports_as_gguf(page):
    open_tab(page, "Train")
    page.get_by_text("Resume a stopped or interrupted run").click()
    page.wait_for_function("() => document.querySelector('#resume-run input')?.value.includes('stopped at step')")
    open_tab(page, "Export")
    page.get_by_label("GGUF q8_0 (llama.cpp, Ollama)").check()
    page.locator("#export").click()
    wait_for_status(page, "export-status", "Exported to", "⚠")
    # the model was loaded again by an earlier test: the stopped run's adapter is put back on it
    assert "model-q8_0.gguf" in page.inner_text("#export-status")
    page.wait_for_selector("#export-file a[download='model-q8_0.gguf']")  # the download link
    assert page.locator("#push-choice input").input_value().endswith("gguf-q8-0")  # ready to push
    shoot(page, "7-export")


def test_a_page_opened_during_a_load_shows_the_model_when_it_is_ready(browser, app_server, monkeypatch):
    """`python app.py --preload ...`: a visitor who arrives mid-load sees it happen, then the model."""
    import threading
    import time

    import ui.workspace
    from finetune.config import ModelSettings

    url, workspace = app_server
    real_load = ui.workspace.load_model

    def slow_load(settings, **options):
        time.sleep(4)
        return real_load(settings, **options)

    monkeypatch.setattr(ui.workspace, "load_model", slow_load)
    loading = threading.Thread(target=workspace.load, args=(ModelSettings(),))
    loading.start()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("#model-status:has-text('Loading embedded')")
    page.wait_for_selector("#model-status:has-text('Parameters')", timeout=60_000)
    open_tab(page, "Dataset")  # the preview was drawn without a tokenizer; now it shows the exact text
    page.wait_for_selector("#training-text:has-text('<|im_start|>assistant')", timeout=60_000)
    loading.join()
    context.close()


def test_a_non_medical_upload_gets_the_neutral_template_and_a_hold_out_sized_to_it(page, tmp_path):
    load_embedded(page)
    open_tab(page, "Dataset")
    page.get_by_label(TEMPLATE_LABELS["plain"]).check()
    rows = [{"input": f"Why does wafer {i} show a yield drop after etch?",
             "output": f"<think>Check the etch chamber log for wafer {i}.</think>A worn chamber seal."}
            for i in range(20)]
    upload(page, write_jsonl(tmp_path / "fab_notes.jsonl", rows))
    # The ### template takes the data's voice: no "Clinical Assessment" for a fab's notes.
    page.wait_for_selector("#training-text:has-text('### Reasoning:')")
    assert page.get_by_label(TEMPLATE_LABELS["plain-neutral"]).is_checked()
    assert "Clinical" not in page.inner_text("#training-text")
    # 20 rows: 2 held out (not 8), and the preview says what is left to train.
    page.wait_for_selector("#dataset-status:has-text('2 rows held out for evaluation')")
    assert "18 left to train" in page.inner_text("#dataset-status")
