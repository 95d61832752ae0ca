"""What a first-time visitor trips on (issue 18), through the app's endpoints on 127.0.0.1: a failed
Load keeps showing the model still in use, Start repeats why an upload was refused, and Push offers
the newest export."""

import os
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from test_app_api import TRAIN_SETTINGS, pick_dataset


@pytest.fixture(scope="module")
def served(app_server):
    return app_server


def test_a_failed_load_keeps_showing_the_model_still_in_use(served):
    client = Client(served[0], verbose=False)
    loaded = client.predict("embedded", False, 256, "auto", api_name="/load_model")
    # The card's first row is the model: no empty header row above it.
    assert "| Model | embedded |\n|---|---|\n| Backend | hf |" in loaded
    failed = client.predict("nobody/no-such-model-xyz", False, 256, "auto", api_name="/load_model")
    assert failed.startswith("⚠ nobody/no-such-model-xyz:")
    assert "Still loaded, and used by chat and training" in failed and "| Model | embedded |" in failed


def test_start_after_a_refused_upload_says_it_was_refused_and_why(served, tmp_path):
    client = Client(served[0], verbose=False)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    bad = tmp_path / "no_answer.csv"
    bad.write_text("Question,Complex_CoT\nFever?,Think.\n")
    pick_dataset(client, "upload", handle_file(str(bad)))
    status, _ = client.predict(*TRAIN_SETTINGS, "", 0, False, False, api_name="/start_training")
    assert status.startswith("⚠ The dataset picked in the Dataset tab was refused: no_answer.csv: missing column")
    assert "pick a preset" not in status  # not the message for a visitor who picked nothing
    assert served[1].job is None  # and nothing started


def test_push_offers_the_newest_export(served):
    exports = served[1].exports_dir
    for age, name in ((60, "run-a-adapter"), (0, "run-b-gguf-q8-0")):
        (exports / name).mkdir(parents=True)
        stamp = time.time() - age
        os.utime(exports / name, (stamp, stamp))
    _, push_choice = Client(served[0], verbose=False).predict(api_name="/exportable")
    assert push_choice["value"] == "run-b-gguf-q8-0"
    assert [choice[1] for choice in push_choice["choices"]] == ["run-b-gguf-q8-0", "run-a-adapter"]


@pytest.mark.slow
def test_start_says_how_many_rows_are_held_out_and_left_to_train(served):
    client = Client(served[0], verbose=False)
    client.predict("embedded", False, 256, "auto", api_name="/load_model")
    pick_dataset(client)  # the bundled sample: 160 rows
    status, _ = client.predict(*TRAIN_SETTINGS, "", None, False, False, api_name="/start_training")  # automatic
    assert status == ("Starting… 16 rows held out for evaluation (automatic: 10% of the rows, 2 to 50), "
                      "144 left to train.")
    job = served[1].job
    job.stop()  # what it said is what the run holds: 16 rows kept out, 144 to train on
    assert job.wait(timeout=600)
    run = Path(job.output_dir)
    assert len((run / "heldout.jsonl").read_text().splitlines()) == 16
    # the rest trained, less those whose prompt alone fills max length 160 (the preview counts them)
    assert len((run / "dataset.jsonl").read_text().splitlines()) == 160
    assert 0 < len((run / "train_rows.jsonl").read_text().splitlines()) <= 144
