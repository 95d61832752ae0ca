"""The command line (`python -m finetune`, and `python -m inference` for its chat), run as a user runs it."""

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import typing
from dataclasses import fields

import pytest
from conftest import ROOT

from finetune.cli import COMMANDS, build_parser, recipe_from_args, settings_from_args
from finetune.cli_flags import given
from finetune.config import ModelSettings, TrainSettings, choices_of
from finetune.data.sources import SAMPLE_FILE
from finetune.models.backend import default_device
from finetune.train.recipe import default_recipe

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end

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
    [commands] = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices


def test_every_subcommand_says_what_it_does_and_every_option_its_default():
    for name, command in subcommands().items():
        assert command.description and len(command.description) > 30, name
        for action in command._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert re.search(r"[(;] ?default: [^()]+\)$", action.help or ""), \
                    f"{name} {action.option_strings[0]} states no default"
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
    parse = build_parser().parse_args
    assert recipe_from_args(parse(["train", "--output", "x"])).data.holdout_rows is None  # sized to the data
    assert recipe_from_args(parse(["train", "--holdout", "auto", "--output", "x"])).data.holdout_rows is None
    assert recipe_from_args(parse(["train", "--holdout", "3", "--output", "x"])).data.holdout_rows == 3
    assert recipe_from_args(parse(["preview", "--template", "plain-neutral"])).data.template == "plain-neutral"


def setting_flags(command: str) -> dict[tuple[str, str], argparse.Action]:
    """The command's flags made from its settings, by the (section, field) each sets."""
    return {target: action for action in subcommands()[command]._actions for target in getattr(action, "targets", ())}


def test_every_field_of_every_settings_class_has_a_flag():
    for name, command in COMMANDS.items():
        flags = setting_flags(name)
        for section in command.sections():
            missing = [item.name for item in fields(section.settings_class) if (section.name, item.name) not in flags]
            assert not missing, f"{name}: {section.settings_class.__name__} has no flag for {missing}"
    train = setting_flags("train")
    assert train["train", "seed"] is train["lora", "seed"]  # one --seed for both
    assert [action.option_strings[0] for action in (train["train", "learning_rate"], train["data", "holdout_rows"],
                                                    train["lora", "r"])] == ["--lr", "--holdout", "--lora-r"]
    evaluate = setting_flags("eval")
    assert evaluate["model", "max_length"] is evaluate["eval", "max_length"]  # the model is prepared for the rows


def test_help_states_each_settings_real_default_by_device():
    def help_of(command: str, flag: str) -> str:
        [action] = [action for action in subcommands()[command]._actions if flag in action.option_strings]
        return action.help

    # TrainSettings.for_device, ModelSettings.for_device and lora_for_device: what a run starts from.
    lr, length = ({device: f"{of(device):g}" for device in ("cpu", "cuda")} for of in (
        lambda device: TrainSettings.for_device(device).learning_rate,
        lambda device: ModelSettings.for_device(device).max_length))
    assert help_of("train", "--lr").endswith(f"default: {lr['cpu']} on CPU, {lr['cuda']} on a GPU)")
    assert help_of("train", "--max-length").endswith(f"(16 to 131,072; default: {length['cpu']} on CPU, "
                                                     f"{length['cuda']} on a GPU)")
    assert help_of("train", "--gradient-checkpointing").endswith("(default: off on CPU, on on a GPU)")
    assert help_of("train", "--holdout").endswith("(0 to 10,000, or auto; default: auto)")
    assert help_of("train", "--max-steps").endswith("(1 to 100,000, or 0; default: 60)")
    assert help_of("eval", "--max-new-tokens").endswith("default: 768 on CPU, 4096 on a GPU)")
    assert help_of("chat", "--decoder").endswith("(default: fast)")
    assert help_of("chat", "--template").endswith("(default: the adapter's, else chat)")
    # The help is the field's docstring; every setting has one of its own or its name.
    assert help_of("train", "--fp8").startswith("FP8 for the frozen 4-bit base weights' forward matmuls")
    for command in COMMANDS:
        for target, action in setting_flags(command).items():
            assert "default: " in action.help and not action.help.startswith(" ("), (command, target)
    # With no flag given, a command builds what its --help states.
    device = default_device()
    for argv in (["eval"], ["chat", "q"], ["export", "--adapter", "x", "--output", "y"]):
        sections = COMMANDS[argv[0]].sections()
        built = settings_from_args(sections, build_parser().parse_args(argv))
        assert built == {section.name: section.defaults[device] for section in sections}, argv
    assert recipe_from_args(build_parser().parse_args(["train", "--output", "x"])) == dataclasses.replace(
        default_recipe(device), output="x")


def test_the_choices_of_each_literal_are_enforced(capsys):
    for name, command in COMMANDS.items():
        flags = setting_flags(name)
        for section in command.sections():
            hints = typing.get_type_hints(section.settings_class)
            for item in fields(section.settings_class):
                if typing.get_origin(hints[item.name]) is typing.Literal:
                    choices = choices_of(section.settings_class, item.name)
                    assert tuple(flags[section.name, item.name].choices) == choices, (name, item.name)
    for args in (["--scheduler", "cosine-ish"], ["--template", "markdown"], ["--backend", "tpu"]):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args(["train", *args])
        assert stopped.value.code == 2 and f"argument {args[0]}: invalid choice: '{args[1]}'" in capsys.readouterr().err


def test_only_the_flags_given_are_settings_and_numbers_are_checked_against_their_range(capsys):
    parse = build_parser().parse_args
    assert given(parse(["train"])) == {}
    flags = ["--seed", "5", "--no-fp8", "--max-steps", "0", "--target-modules", "q_proj,v_proj"]
    assert given(parse(["train", *flags])) == {"train": {"seed": 5, "fp8_matmuls": False, "max_steps": None},
                                               "lora": {"seed": 5, "target_modules": ("q_proj", "v_proj")}}
    assert given(parse(["chat", "--decoder", "generate", "q"])) == {"generation": {"fast": False}}
    for args, message in [(["train", "--lora-r", "0"], "argument --lora-r: must be between 1 and 256, not 0"),
                          (["train", "--lr", "nan"], "argument --lr: must be a finite number, not nan"),
                          (["eval", "--limit", "some"], "argument --limit: expected a number or all, got 'some'"),
                          (["chat", "--decoder", "slow", "q"], "argument --decoder: invalid choice: 'slow'")]:
        with pytest.raises(SystemExit):
            parse(args)
        assert message in capsys.readouterr().err


def test_help_imports_no_torch_and_inference_is_an_alias_of_chat():
    code = ("import sys\nfrom finetune.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['preview', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    quick = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert quick.stderr.strip().splitlines()[-1] == "False", quick.stderr
    alias = run("inference", "--help", timeout=60)
    assert alias.returncode == 0 and "usage: python -m finetune chat" in alias.stdout and "--decoder" in alias.stdout
