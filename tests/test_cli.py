"""The two command lines, run as a user runs them."""

import argparse
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from finetune.data.sources import SAMPLE_FILE

SAMPLE_ROWS = len(SAMPLE_FILE.read_text().splitlines())


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("cli") / "run"
    result = run(
        "finetune",
        "train",
        "--model",
        "embedded",
        "--dataset",
        "sample",
        "--max-steps",
        "3",
        "--max-length",
        "160",
        "--max-rows",
        "12",
        "--holdout",
        "2",
        "--eval-max-new-tokens",
        "8",
        "--output",
        str(output),
    )
    return result, output


def test_train_prints_a_json_line_per_step_then_the_result(cli_run):
    result, output = cli_run
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines[:-1]] == [1, 2, 3]
    final = lines[-1]
    assert final["status"] == "done" and final["steps"] == 3
    # 2 of the 12 rows were held out, and evaluated on at the end: base vs fine-tuned.
    assert "10 rows" in result.stderr and "2 held out" in result.stderr
    assert final["eval"]["base"]["n"] == final["eval"]["finetuned"]["n"] == 2
    assert final["eval"]["finetuned"]["heldout_loss"] < final["eval"]["base"]["heldout_loss"]
    assert json.loads((output / "run.json").read_text())["eval"] == final["eval"]
    assert len((output / "heldout.jsonl").read_text().splitlines()) == 2
    assert final["loss_first"] == lines[0]["loss"] and final["loss_last"] == lines[-2]["loss"]
    assert final["adapter"] == str(output / "adapter") and (output / "adapter" / "adapter_config.json").is_file()
    # What the run chose is visible: the CPU demo recipe, length-grouped batches, the backend.
    assert "recipe: micro-batch 2 x grad-accum 1, group_by_length batches, adamw_torch" in result.stderr
    assert "backend hf" in result.stderr


def test_inference_json_with_the_trained_adapter(cli_run):
    _, output = cli_run
    result = run(
        "inference",
        "--model",
        "embedded",
        "--adapter",
        str(output),
        "--json",
        "--max-new-tokens",
        "16",
        "What causes a fever?",
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert set(reply) >= {"thinking", "answer"} and (reply["thinking"] or reply["answer"])


def test_eval_prints_base_and_finetuned_on_the_runs_heldout_rows(cli_run):
    _, output = cli_run
    result = run("finetune", "eval", "--adapter", str(output), "--max-new-tokens", "8", "--max-length", "160")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    assert set(figures) == {"base", "finetuned"} and "2 rows from heldout.jsonl" in result.stderr
    for model in figures.values():
        assert {"heldout_loss", "perplexity", "format_adherence", "mcq_accuracy", "n", "mean_reasoning_tokens",
                "mean_answer_tokens"} <= set(model) and model["n"] == 2
        assert model["mcq_accuracy"] is None  # the bundled sample has no options


def test_eval_on_a_multiple_choice_file_without_an_adapter():
    result = run("finetune", "eval", "--dataset", "sample-mcq", "--limit", "2", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    assert set(figures) == {"base"} and figures["base"]["mcq_n"] == 2 and figures["base"]["heldout_loss"] is None


def test_export_writes_a_merged_model_with_its_card(cli_run, tmp_path):
    _, output = cli_run
    result = run("finetune", "export", "--adapter", str(output), "--format", "merged_16bit",
                 "--output", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"format": "merged_16bit", "output": str(tmp_path / "merged")}
    card = (tmp_path / "merged" / "README.md").read_text()
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert "Not medical advice" in card and "3 steps" in card
    assert "Held-out evaluation (2 rows of clinical_vignettes.jsonl, never trained on)" in card
    again = run("finetune", "export", "--adapter", str(output), "--output", str(tmp_path / "merged"))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_inference_streams_to_the_terminal():
    result = run("inference", "--max-new-tokens", "12", "--temperature", "0", "What is sepsis?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[answer]\n") and len(result.stdout) > len("[answer]\n") + 5
    assert "12 tokens in" in result.stderr and "fast decoder" in result.stderr  # the path it took


def test_inference_decoders_write_the_same_greedy_answer():
    replies = [json.loads(run("inference", "--json", "--max-new-tokens", "12", "--temperature", "0",
                              "--decoder", decoder, "What is sepsis?").stdout) for decoder in ("fast", "generate")]
    assert replies[0]["decoder"].startswith("fast decoder") and replies[1]["decoder"] == "transformers generate"
    assert replies[0]["answer"] == replies[1]["answer"] and replies[0]["tokens"] == replies[1]["tokens"] == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--dataset", "pyproject.toml"], "unsupported file type '.toml'"),
        (["--model", "./nowhere"], "no such local folder"),
        (["--max-steps", "ten"], "invalid int value: 'ten'"),
        (["--holdout", str(SAMPLE_ROWS)], f"cannot hold out {SAMPLE_ROWS} of {SAMPLE_ROWS} rows"),
        (["--holdout", "some"], "expected a number of rows or auto, got 'some'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = run("finetune", "train", "--output", str(tmp_path / "x"), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_file_content_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"Question": "q", "Response": "a"}\n{"Question": \n')
    result = run("finetune", "train", "--dataset", str(bad), "--output", str(tmp_path / "x"))
    assert result.returncode == 2 and "bad.jsonl: malformed JSON on line 2" in result.stderr


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from finetune.__main__ import build_parser

    [commands] = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices


def test_every_subcommand_says_what_it_does_and_every_option_its_default():
    for name, command in subcommands().items():
        assert command.description and len(command.description) > 30, name
        for action in command._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert "(default: " in (action.help or ""), f"{name} {action.option_strings[0]} states no default"
    top = run("finetune", "--help")  # each subcommand listed with its one-line help
    assert top.returncode == 0 and all(f"    {name}  " in top.stdout for name in subcommands())


def test_export_defaults_to_the_adapter_and_offers_the_gguf_files():
    from finetune.config import DEFAULT_EXPORT_FORMAT
    from finetune.export.save import FORMATS

    export = subcommands()["export"]
    [fmt] = [action for action in export._actions if action.dest == "format"]
    assert DEFAULT_EXPORT_FORMAT == fmt.default == "adapter" and tuple(fmt.choices) == FORMATS
    assert {"gguf_f16", "gguf_q8_0", "gguf_q4_k_m"} <= set(fmt.choices)
    assert "(default: adapter)" in " ".join(export.format_help().split())


def test_holdout_is_automatic_unless_a_number_is_given_and_templates_come_from_the_vocabulary():
    from finetune.__main__ import _settings, build_parser

    parse = build_parser().parse_args
    assert _settings(parse(["train", "--output", "x"])).data.holdout_rows is None  # sized to the data
    assert _settings(parse(["train", "--holdout", "auto", "--output", "x"])).data.holdout_rows is None
    assert _settings(parse(["train", "--holdout", "3", "--output", "x"])).data.holdout_rows == 3
    assert _settings(parse(["preview", "--template", "plain-neutral"])).data.template == "plain-neutral"
