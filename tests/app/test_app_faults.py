"""Killing the app mid-training, as a Space restart does: the run's folder stays readable, the next
start marks it incomplete, and the Train tab resumes it from its last checkpoint."""

import os
import signal
import time

import pytest
from conftest import choose_sample_dataset, start_app
from gradio_client import Client

from finetune.runs import last_checkpoint, read_record

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end

# /start_training inputs: 20 steps, so a checkpoint every 2 (ten a run)
TRAIN = ("chat", "", 128, 20, 2e-3, 2, 1, 4, 8, 0.0, 0, "constant", "adamw_torch", "random", False, 1)


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_app_leaves_its_run_incomplete_and_resumable(tmp_path):
    run_dir = tmp_path / "runs" / "night-run"
    process, url = start_app(tmp_path)
    try:
        client = Client(url, verbose=False)
        client.predict("embedded", False, 128, "auto", api_name="/load_model")
        choose_sample_dataset(client)
        assert client.predict(*TRAIN, "night-run", 0, False, api_name="/start_training")[0].startswith("Starting…")
        wait_for(lambda: last_checkpoint(run_dir) is not None, 240, "the first checkpoint")
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no cleanup
        process.wait()
    killed_at = read_record(run_dir)
    assert killed_at["status"] == "running" and killed_at["total_steps"] == 20  # readable as it was left

    process, url = start_app(tmp_path)  # the same output folder
    try:
        record = read_record(run_dir)
        assert record["status"] == "incomplete" and "resume continues from step" in record["error"]
        client = Client(url, verbose=False)
        choices, note = client.predict(api_name="/runs")
        assert "The app stopped while training night-run: marked incomplete" in note
        [(label, name)] = choices["choices"]
        assert name == "night-run" and "incomplete" in label and "resumable from step" in label
        client.predict("embedded", False, 128, "auto", api_name="/load_model")
        assert client.predict("night-run", api_name="/resume_training")[0] == "Resuming…"
        wait_for(lambda: client.predict(api_name="/dashboard")[1].startswith("Done at step 20/20"), 300,
                 "the resumed run to finish")
        record = read_record(run_dir)
        assert record["status"] == "done" and record["steps"] == 20
        assert [m["step"] for m in record["metrics"]] == list(range(1, 21))  # one curve across the restart
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        process.terminate()
        process.wait(60)
