"""The app under load: 20 visitors chatting at once, a training run going on, round after round.
Bounded: three rounds of a few short steps and 16-token replies, then it stops by itself."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import choose_sample_dataset, start_app
from conftest import message_text as text
from gradio_client import Client

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end

VISITORS = 20
QUESTIONS = [f"Patient {n}: a {20 + n}-year-old with fever and cough for {n + 1} days. Next step?"
             for n in range(VISITORS)]
# /start_training inputs (see test_app_api.TRAIN_SETTINGS): long enough to still run while visitors chat
TRAIN = ("chat", "", 128, 400, 2e-3, 2, 1, 4, 8, 0.0, 0, "constant", "adamw_torch", "random", False, 1)


def ask(url: str, question: str) -> tuple[str, list[dict], str, str]:
    """One visitor (its own client and session) asks one question of the base model, greedy, 16 tokens.
    Returns the question, the base pane's messages, what is left in the question box, and the status line."""
    base, _, box, status = Client(url, verbose=False).predict(
        question, [], [], "Base only", 16, 0.0, 0.95, 1.0, 0, "chat", "", api_name="/chat")
    return question, base, box, status


def everyone_asks(url: str) -> list[tuple[str, list[dict], str, str]]:
    with ThreadPoolExecutor(VISITORS) as pool:
        return list(pool.map(lambda q: ask(url, q), QUESTIONS))


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    process, url = start_app(tmp_path_factory.mktemp("load"))
    Client(url, verbose=False).predict("embedded", False, 128, "auto", api_name="/load_model")
    yield process, url
    process.terminate()
    process.wait(60)


def test_twenty_visitors_and_a_training_run_round_after_round(app):
    process, url = app
    # Each question's greedy reply, asked alone: what each visitor must get back, whoever else is asking.
    alone = {question: answer for question, answer, _, _ in map(lambda q: ask(url, q), QUESTIONS)}
    assert all(answer for answer in alone.values())
    trainer = Client(url, verbose=False)
    choose_sample_dataset(trainer)
    memory = []
    for round_number in range(3):
        status, _ = trainer.predict(*TRAIN, f"load-{round_number}", 0, False, api_name="/start_training")
        assert status.startswith("Starting…")
        # While the run trains: every visitor gets an answer of their own, which says why they must wait,
        # and keeps their own question in the box to send again.
        during = everyone_asks(url)
        assert len(during) == VISITORS
        for question, base, box, status in during:
            assert base == [] and box == question and "being trained" in status
        assert "Stopping" in trainer.predict(api_name="/stop_training")
        deadline = time.time() + 120
        while "Stopped" not in trainer.predict(api_name="/dashboard")[1] and time.time() < deadline:
            time.sleep(0.5)
        # After it: twenty at once, each gets the reply to their own question, exactly as when alone.
        after = everyone_asks(url)
        for question, base, _, status in after:
            assert text(base[0]) == question, "a visitor got someone else's conversation"
            assert base == alone[question], f"{question!r} got another reply under load"
            assert "⚠" not in status
        memory.append(resident_mb(process.pid))
    print(f"resident memory of the app by round: {memory} MB")
    # The first round warms caches (the trainer, the decoder); after that, a round must not leave memory
    # behind. Before runs released their memory at the end (gc, malloc_trim), each round kept ~150 MB more.
    assert memory[2] - memory[1] < 100, f"resident memory by round: {memory} MB"
