"""The shared workspace of the app: one model, one run at a time, clear refusals, stop that saves."""

import pytest
from conftest import QUICK_LENGTH, SHARED_SAMPLE, needs_shared, quick_lora, quick_train

from finetune.config import DataSettings, ModelSettings
from finetune.data.sources import map_columns, read_source
from finetune.evaluate.heldout import EvalSettings
from finetune.generate.reply import GenerationSettings, ModelBusy
from finetune.runs import RunFolder
from finetune.train.job import TrainingBusy
from finetune.train.recipe import load_recipe
from ui.workspace import Workspace, WorkspaceError


def sample_rows(rows=12):
    return map_columns(read_source("sample", max_rows=rows))


@pytest.fixture
def workspace(tmp_path):
    space = Workspace(tmp_path / "runs")
    space.load(ModelSettings())
    return space


def test_start_without_a_model_or_a_dataset_says_which_is_missing(tmp_path, workspace):
    with pytest.raises(WorkspaceError, match="No model loaded: load one in the Model tab first"):
        Workspace(tmp_path).start_training(sample_rows(), DataSettings(), quick_train(), quick_lora())
    with pytest.raises(WorkspaceError, match="No dataset: pick a preset or upload a file in the Dataset tab"):
        workspace.start_training(None, DataSettings(), quick_train(), quick_lora())


@pytest.mark.slow
def test_one_run_at_a_time_and_no_model_swap_or_chat_during_it(workspace):
    job = workspace.start_training(sample_rows(), DataSettings(), quick_train(200), quick_lora(), "first",
                                   max_length=QUICK_LENGTH)
    try:
        with pytest.raises(TrainingBusy, match="busy: a training job is already running"):
            workspace.start_training(sample_rows(), DataSettings(), quick_train(), quick_lora(), "second")
        with pytest.raises(TrainingBusy):
            workspace.load(ModelSettings())
        with pytest.raises(ModelBusy, match="being trained"):
            next(workspace.chat("What is sepsis?", GenerationSettings(max_new_tokens=4)))
    finally:
        assert workspace.stop_training().startswith("Stopping after the current step")
        assert job.wait(timeout=300)
    assert job.status == "stopped" and (workspace.runs_dir / "first" / "adapter" / "adapter_config.json").exists()
    assert workspace.stop_training() == "No training run is going on."


@pytest.mark.slow
def test_run_names_cannot_leave_the_runs_folder(workspace):
    job = workspace.start_training(sample_rows(4), DataSettings(), quick_train(1), quick_lora(), "../../etc/x y")
    assert job.wait(timeout=300) and job.status == "done", job.error
    assert job.output_dir == str(workspace.runs_dir / "etc-x-y")
    # No max length given: the run's is the one the model was loaded for.
    recipe = load_recipe(RunFolder(job.output_dir).recipe, "cpu")
    assert recipe.model.max_length == workspace.loaded.settings.max_length == 2048


@pytest.mark.slow
def test_chat_prompts_the_way_the_adapter_was_trained(workspace):
    job = workspace.start_training(sample_rows(4), DataSettings(template="plain"), quick_train(1), quick_lora(),
                                   max_length=QUICK_LENGTH)
    assert job.wait(timeout=300) and job.status == "done", job.error
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0, template="auto")
    final = list(workspace.chat("What is sepsis?", settings, panes=("finetuned",)))[-1]
    # The ### template's prompt ends inside "### Thinking Process:", so the reply opens in a bubble.
    assert final["finetuned"][0]["metadata"]["title"] == "Reasoning"


def test_a_failed_load_keeps_the_model_in_use(workspace, tmp_path):
    before = workspace.loaded
    workspace.allow_local_paths = True  # as an operator who lets visitors name folders
    with pytest.raises(Exception, match="no such local folder"):
        workspace.load(ModelSettings(name=str(tmp_path / "missing")))
    assert workspace.loaded is before
    workspace.allow_local_paths = False  # the default: a path is refused before anything is read
    with pytest.raises(Exception, match="local folders are off in this app"):
        workspace.load(ModelSettings(name=str(tmp_path / "missing")))
    assert workspace.loaded is before


def test_stop_ends_only_this_visitors_reply_and_skips_the_pane_not_started(workspace):
    from finetune.config import LoraSettings
    from finetune.generate.chat import NOT_STARTED, STOPPED
    from finetune.models.adapters import attach_fresh_adapter

    attach_fresh_adapter(workspace.loaded, LoraSettings(r=4, gradient_checkpointing=False))
    settings = GenerationSettings(max_new_tokens=300, temperature=0.0)
    updates = []
    for update in workspace.chat("Explain heart failure in detail.", settings, visitor="me"):
        updates.append(update)
        if len(updates) == 3:
            workspace.stop_chat("someone else")  # another visitor's Stop does not touch this reply
        if len(updates) == 6:
            workspace.stop_chat("me")
    final = updates[-1]
    # the pane whose turn never came says so, rather than staying blank
    assert final["base"][-1]["content"] == STOPPED
    assert final["finetuned"] == [{"role": "assistant", "content": NOT_STARTED}]
    assert len(updates) < 15  # it ended within a few tokens of the Stop


@needs_shared(SHARED_SAMPLE)
def test_the_evaluate_tab_offers_real_medical_o1_rows_first_and_warns_on_the_bundled_sample(tmp_path):
    space = Workspace(tmp_path / "runs", real_rows=SHARED_SAMPLE)
    sources = space.evaluation_sources()
    assert sources[0][1] == "real" and "120; HuatuoGPT-o1, never bundled or trained on" in sources[0][0]
    space.load(ModelSettings())
    settings = EvalSettings(limit=1, generate=False)
    *_, (line, report) = space.evaluate("real", None, settings)
    assert line == "Done. 1 questions from medical_o1_sample.jsonl." and report.metrics["base"]["heldout_loss"] > 0
    *_, (line, _) = space.evaluate("sample", None, settings)
    assert "so they share its shape and flatter the fine-tuned model; the Evaluate tab's real medical-o1 rows" in line


def test_without_real_rows_the_source_is_not_offered_and_asking_for_it_says_so(workspace):
    assert "real" not in [source for _, source in workspace.evaluation_sources()]
    with pytest.raises(WorkspaceError, match="No real medical-o1 rows on this server"):
        next(workspace.evaluate("real", None, EvalSettings(limit=1, generate=False)))
