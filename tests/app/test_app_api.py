"""The app's endpoints through gradio_client, against the app served on 127.0.0.1: what a script (or
the browser) gets back, one visitor's session at a time, and two visitors sharing one run."""

import json
import time

import pytest
from conftest import message_text as text
from gradio_client import Client, handle_file

from finetune.data.sources import SAMPLE_FILE
from finetune.generate.chat import NO_ADAPTER, STOPPED

QUESTION = "A 67-year-old on warfarin has an INR of 9 and no bleeding. How should this be managed?"
# preview_dataset inputs after the column pickers: template, system prompt, max length, preview row, hold-out
# (None: automatic)
PREVIEW_SETTINGS = ("chat", "", 256, 1, None)
# start_training inputs: template, system prompt, max length, steps, lr, micro-batch, accumulation, r, alpha,
# dropout, warm-up, schedule, optimizer, batches, checkpointing, seed; then run name, held-out rows, answers at end
TRAIN_SETTINGS = ("chat", "", 160, 200, 2e-3, 2, 1, 8, 16, 0.0, 0, "constant", "adamw_torch", "group_by_length", False,
                  3407)


@pytest.fixture(scope="module")
def url(app_server):
    return app_server[0]


def visitor(url) -> Client:
    return Client(url, verbose=False)


def pick_dataset(client, source="sample", file=None):
    """What the Dataset tab does: read the choice once, then preview it with the detected columns."""
    *pickers, status = client.predict(source, file, "train[0:500]", api_name="/read_dataset")
    columns = [picker["value"] if isinstance(picker, dict) else picker for picker in pickers]
    return status, columns, client.predict(*columns, *PREVIEW_SETTINGS, api_name="/preview_dataset")


def test_load_reports_what_was_loaded_and_a_bad_model_is_a_message(url):
    client = visitor(url)
    bad = client.predict("nobody/no-such-model-xyz", False, 256, "auto", api_name="/load_model")
    assert bad.startswith("⚠ nobody/no-such-model-xyz:") and "Traceback" not in bad
    info = client.predict("embedded", False, 256, "auto", api_name="/load_model")
    assert "✓" in info and "| Backend | hf |" in info and "| Device | cpu |" in info
    assert "| Quantization | none (full precision) |" in info and "| Parameters | 135 M |" in info


def test_an_uploaded_file_is_previewed_with_its_detected_columns(url, tmp_path):
    client = visitor(url)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    rows = [{"instruction": f"Case {i}: fever and cough?", "output": f"<think>Pneumonia {i}?</think>Chest X-ray."}
            for i in range(6)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    status, columns, (summary, table, segments, _) = pick_dataset(client, "upload", handle_file(str(path)))
    assert status == "" and columns[0] == "instruction" and columns[2] == "output"
    assert summary.startswith("**alpaca.json**: 6 rows")
    assert table["data"][0][0] == "Case 0: fever and cough?"
    trained = "".join(s["token"] for s in segments if s["class_or_confidence"] == "trained")
    assert "Pneumonia 0?" in trained and "Chest X-ray." in trained and "fever and cough" not in trained


def test_a_file_with_a_missing_column_gets_a_message_and_the_app_keeps_answering(url, tmp_path):
    client = visitor(url)
    path = tmp_path / "no_answer.csv"
    path.write_text("Question,Complex_CoT\nFever?,Think.\n")
    _, _, (summary, *_) = pick_dataset(client, "upload", handle_file(str(path)))
    assert summary.startswith("⚠ no_answer.csv: missing column for the answer; columns found: Question, Complex_CoT")
    _, _, (summary, *_) = pick_dataset(client)
    assert summary.startswith(f"**clinical_vignettes.jsonl**: {len(SAMPLE_FILE.read_text().splitlines())} rows")


def test_chat_without_an_adapter_answers_in_the_base_pane_and_explains_the_other(url):
    client = visitor(url)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    job = client.submit(QUESTION, [], [], "Base vs fine-tuned", 16, 0.0, 0.95, 1.0, 0, "auto", "", api_name="/chat")
    base, tuned, question, status = job.result()
    # The first update empties the question box; later ones leave it alone (a next question being typed).
    assert job.outputs()[0][2] == "" and question == {"__type__": "update"}
    # The status line says how fast each reply was written and by which decoding path.
    assert status.startswith("Base: 16 tokens in ") and "fast decoder" in status
    assert base[0]["role"] == "user" and text(base[0]) == QUESTION
    assert base[-1]["role"] == "assistant" and text(base[-1])
    assert text(tuned[-1]) == NO_ADAPTER


@pytest.mark.slow
def test_two_visitors_share_one_run(url, app_server):
    workspace = app_server[1]
    first, second = visitor(url), visitor(url)
    first.predict("embedded", False, 256, "auto", api_name="/load_model")
    pick_dataset(first)
    pick_dataset(second)
    started, _ = first.predict(*TRAIN_SETTINGS, "shared", 0, False, api_name="/start_training")
    assert started.startswith("Starting…")
    refused, _ = second.predict(*TRAIN_SETTINGS, "other", 0, False, api_name="/start_training")
    assert refused.startswith("⚠ busy: a training job is already running")
    *_, chat_status = second.predict(QUESTION, [], [], "Base only", 16, 0.0, 0.95, 1.0, 0, "auto", "",
                                     api_name="/chat")
    assert chat_status.startswith("⚠ The model is being trained")
    assert workspace.job.wait(timeout=0.1) is False  # still running
    assert second.predict(api_name="/stop_training").startswith("Stopping after the current step")
    assert workspace.job.wait(timeout=300)
    _, status, losses, *_ = second.predict(api_name="/dashboard")
    assert status.startswith("Stopped at step") and "adapter saved to" in status
    points = losses["value"]["data"] if "value" in losses else losses["data"]
    assert len(points) == 2 * len(workspace.job.metrics) > 0  # raw and smoothed per step


def test_stop_ends_the_visitors_reply_in_progress(url):
    client = visitor(url)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    job = client.submit("Explain heart failure in detail.", [], [], "Base only", 1024, 0.0, 0.95, 1.0, 0, "auto", "",
                        api_name="/chat")
    deadline = time.time() + 120
    while len(job.outputs()) < 3 and time.time() < deadline:
        time.sleep(0.1)
    client.predict(api_name="/stop_chat")
    base, *_ = job.result(timeout=120)
    assert text(base[-1]) == STOPPED and len(job.outputs()) < 200


@pytest.mark.slow
def test_a_run_holds_rows_out_and_the_evaluate_tab_compares_on_them(url, app_server):
    workspace = app_server[1]
    client = visitor(url)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    pick_dataset(client)
    settings = (*TRAIN_SETTINGS[:3], 4, *TRAIN_SETTINGS[4:])  # 4 steps
    started, _ = client.predict(*settings, "heldout", 3, False, api_name="/start_training")
    assert started.startswith("Starting…")
    assert workspace.job.wait(timeout=600) and workspace.job.status == "done", workspace.job.error
    _, status, *_, eval_table, source, _timer, _resume, _note = client.predict(api_name="/dashboard")
    assert "held-out loss" in status  # e.g. "held-out loss 2.712 → 2.604 (-4%)"
    assert source.startswith("Held out of this run: 3 rows of clinical_vignettes.jsonl, never trained on. These rows "
                             "come from the bundled sample the model trained on, so they share its shape and flatter")
    measures = [row[0] for row in eval_table["data"]]
    assert measures[0].startswith("Held-out loss") and eval_table["headers"] == ["Measure", "Base", "Fine-tuned"]

    line, table, questions, detail = client.predict("heldout", None, 2, 16, "auto", api_name="/evaluate")
    assert line.startswith("Done. 2 questions from heldout.jsonl. These rows come from the bundled sample")
    assert table["headers"] == ["Measure", "Base", "Fine-tuned"]
    assert any(row[0].startswith("Format") for row in table["data"])
    questions = questions.get("value", questions)  # an update: the table comes with its column widths
    assert len(questions["data"]) == 2 and detail.startswith("**Question 1.**")


def test_evaluate_with_a_bad_file_says_what_is_wrong(url, tmp_path):
    client = visitor(url)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "Z"}\n')
    from gradio_client import handle_file

    line, *_ = client.predict("upload", handle_file(str(bad)), 2, 16, "auto", api_name="/evaluate")
    assert line.startswith("⚠ bad.jsonl, row 1: has options but no answer_idx")


def test_stop_ends_an_evaluation_in_progress(url):
    client = visitor(url)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    job = client.submit("sample-mcq", None, 44, 512, "chat", api_name="/evaluate")
    deadline = time.time() + 120
    while not job.outputs() and time.time() < deadline:  # the first progress line
        time.sleep(0.1)
    assert job.outputs() and job.outputs()[0][0].startswith("Evaluating 44 questions")
    client.predict(api_name="/stop_evaluation")
    line, table, *_ = job.result(timeout=300)
    assert line == "Stopped; the figures cover the questions answered so far. 44 questions from clinical_mcq.jsonl."
    questions_row = next(row for row in table["data"] if row[0] == "Questions")
    assert int(questions_row[1]) < 44
