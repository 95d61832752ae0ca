"""Whatever a script sends to the app's HTTP API, field by field, it gets a sentence naming the field (or
the handler's own message) back, and the app keeps serving: text for a number, None, inf, NaN, huge
numbers, lists, objects, lone surrogates, over-long text, unknown choices, garbled chat histories.

Raw HTTP (Gradio's /gradio_api/call/<name>), not gradio_client: the client refuses to send some of
these (a lone surrogate), and a hostile visitor does not use it. Nothing is loaded, so a value that
passes its field reaches the handler, which says "No model loaded": every example is cheap and none
starts a run. Hypothesis is derandomized: CI sees the same examples every run.
"""

import json
import math
import urllib.request
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune.bounds import TextLimits

FUZZ = settings(max_examples=60, deadline=timedelta(seconds=30), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LIMITS = TextLimits()
# /start_training's inputs, valid: template, system prompt, max length, steps, lr, micro-batch, accumulation,
# r, alpha, dropout, warm-up, schedule, optimizer, batches, checkpointing, seed, run name, held-out, answers, fp8
START = ["chat", "", 160, 10, 2e-3, 2, 1, 8, 16, 0.0, 0, "constant", "adamw_torch", "random", False, 3407, "", 0,
         False, False]
# /chat's inputs: question, base and fine-tuned histories, compare mode, max new tokens, temperature, top-p,
# repetition penalty, seed, template, system prompt
CHAT = ["What is sepsis?", [], [], "Base only", 16, 0.0, 0.95, 1.0, 0, "chat", ""]
LOAD = ["embedded", False, 160, "auto"]
# Endpoints whose handler answers "No model loaded" or "Pick ..." without a model: (valid inputs, inputs not
# fuzzed: files, which Gradio itself refuses unless uploaded)
OTHERS = {"evaluate": (["sample-mcq", None, 2, 16, "auto"], {1}), "export": ([None, "adapter", ""], set()),
          "push": ([None, "", "", True], set()), "resume_training": ([None], set()),
          "use_run": ([None], set())}
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["\ud800", "12", " 3 ", "1e400", "-0", "nan", "inf", "x" * 70_000]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def call(url: str, api: str, data: list) -> tuple[str, object]:
    """('complete', outputs) or ('error', message or None) for one call of endpoint `api`."""
    body = json.dumps({"data": data}).encode()  # ASCII JSON: a lone surrogate travels as \\ud800, as a script's
    request = urllib.request.Request(f"{url}gradio_api/call/{api}", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        event_id = json.load(answer)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event_id}", timeout=120) as stream:
        events = stream.read().decode().strip().split("\n\n")
    kind, _, payload = events[-1].partition("\n")
    kind, payload = kind.removeprefix("event: "), json.loads(payload.removeprefix("data: ") or "null")
    return kind, payload.get("error") if kind == "error" and isinstance(payload, dict) else payload


@pytest.fixture(scope="module")
def api(app_server):
    url = app_server[0]
    labels = {}
    with urllib.request.urlopen(f"{url}gradio_api/info", timeout=30) as answer:
        endpoints = json.load(answer)["named_endpoints"]
    for name in ("start_training", "chat", "load_model", *OTHERS):
        labels[name] = [parameter["label"] for parameter in endpoints[f"/{name}"]["parameters"]]
    return url, labels


def assert_named_or_handled(kind: str, payload, label: str, value) -> None:
    """A refusal naming the field, or the handler's own message; never Gradio's empty error."""
    if kind == "error":
        assert payload and label.split(" (")[0] in payload, f"{label} = {value!r}: {payload!r}"
        json.dumps(payload).encode("utf-8")  # sendable: no lone surrogate echoed back
        assert len(payload) < 1000, f"{label}: the message echoes {len(payload):,} characters"
    else:
        assert kind == "complete", (kind, payload)
        statuses = [part for part in payload if isinstance(part, str) and part.startswith("⚠")]
        assert statuses, f"{label} = {value!r} reached the handler but got no message: {payload!r}"


@FUZZ
@given(data=st.data())
def test_any_value_for_any_start_field_is_named_or_handled(api, data):
    url, labels = api
    index = data.draw(st.integers(0, len(START) - 1), "field")
    value = data.draw(JUNK, "value")
    sent = [*START[:index], value, *START[index + 1:]]
    assert_named_or_handled(*call(url, "start_training", sent), labels["start_training"][index], value)


@FUZZ
@given(data=st.data())
def test_any_value_for_any_chat_field_is_named_or_handled(api, data):
    url, labels = api
    index = data.draw(st.integers(0, len(CHAT) - 1), "field")
    value = data.draw(st.one_of(JUNK, st.just([{"role": "user"}]), st.just([{"role": "user", "content": 3}])),
                      "value")
    sent = [*CHAT[:index], value, *CHAT[index + 1:]]
    assert_named_or_handled(*call(url, "chat", sent), labels["chat"][index], value)


@settings(FUZZ, max_examples=15)
@pytest.mark.parametrize("endpoint", list(OTHERS))
@given(data=st.data())
def test_any_value_for_any_field_of_the_other_endpoints_is_named_or_handled(api, endpoint, data):
    url, labels = api
    valid, skipped = OTHERS[endpoint]
    index = data.draw(st.sampled_from([i for i in range(len(valid)) if i not in skipped]), "field")
    value = data.draw(JUNK, "value")
    sent = [*valid[:index], value, *valid[index + 1:]]
    assert_named_or_handled(*call(url, endpoint, sent), labels[endpoint][index], value)


@pytest.mark.parametrize(("index", "value", "message"), [
    (2, 10**30, "Max length (tokens) must be between 16 and 131,072, not 1e+30"),
    (4, math.inf, "Learning rate must be a finite number, not inf"),
    (3, "many", "Max steps must be a number, not 'many'"),
    (15, -1, "Seed must be between 0 and 4,294,967,295, not -1"),
    (9, 0.95, "LoRA dropout must be between 0 and 0.9, not 0.95"),
    (12, "sgd_of_doom", "Optimizer must be one of adamw_8bit, adamw_torch, paged_adamw_8bit, adafactor"),
    (1, "x" * (LIMITS.system_prompt + 1), f"System prompt (optional) is {LIMITS.system_prompt + 1:,} characters"),
    (16, "\ud800", "Run name (a folder in the app's output folder) holds \\ud800"),
    (18, "yes", "must be true or false, not 'yes'"),
])
def test_a_bad_start_setting_is_refused_naming_it(api, index, value, message):
    url, _ = api
    kind, payload = call(url, "start_training", [*START[:index], value, *START[index + 1:]])
    assert kind == "error" and message in payload, payload


def test_chat_refuses_an_over_long_question_or_a_garbled_history_by_name(api):
    url, _ = api
    kind, payload = call(url, "chat", ["x" * (LIMITS.message + 1), *CHAT[1:]])
    assert kind == "error" and payload.startswith(f"Question is {LIMITS.message + 1:,} characters long"), payload
    kind, payload = call(url, "chat", [CHAT[0], "not a history", *CHAT[2:]])
    assert kind == "error" and payload.startswith("Base model (adapter off): the chat history is not a list"), payload


def test_load_refuses_an_over_long_model_id_and_echoes_little(api):
    url, _ = api
    kind, payload = call(url, "load_model", ["a/" + "b" * (LIMITS.model_id + 1), *LOAD[1:]])
    assert kind == "error" and payload.startswith("Model is"), payload
    assert len(payload) < 200
    kind, payload = call(url, "load_model", LOAD)  # and the app still serves
    assert kind == "complete" and payload[0].startswith("✓ **Loaded.**"), payload
