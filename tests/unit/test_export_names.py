"""Export folders: an automatic name moves on to a free one, a typed one taken is refused naming a free one;
the card and adapter_config.json name the base model's Hub repo; the folders and files get the modes a plain
mkdir / open gives; Push says what to do with and without exports."""

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import trained_looking_adapter

from finetune.export.save import AtomicFolder, ExportError, base_model
from finetune.models.embedded import HUB_REPO, embedded_model_dir
from finetune.models.load import ModelInfo
from ui.workspace import Workspace, WorkspaceError


@pytest.fixture
def workspace(loaded, tmp_path):
    """A workspace holding the embedded model with a trained-looking adapter (no run: exports are `run-…`)."""
    trained_looking_adapter(loaded)
    workspace = Workspace(tmp_path / "runs")
    workspace.loaded = loaded
    return workspace


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_automatic_names_move_on_and_a_typed_name_taken_is_refused_naming_a_free_one(workspace):
    first, second = workspace.export("adapter"), workspace.export("adapter")
    assert (first.name, second.name) == ("run-adapter", "run-adapter-2")
    assert (second / "adapter_config.json").is_file() and workspace.exports() == ["run-adapter-2", "run-adapter"]
    with pytest.raises(ExportError, match="run-adapter already exists: pick another name, such as run-adapter-3"):
        workspace.export("adapter", "run-adapter")
    assert sorted(path.name for path in workspace.exports_dir.iterdir()) == ["run-adapter", "run-adapter-2"]


def test_two_exports_under_way_together_land_in_two_folders(tmp_path):
    target = tmp_path / "run-adapter"
    one, two = AtomicFolder(target, next_free=True), AtomicFolder(target, next_free=True)
    with one as first, two as second:  # both start before either is in place
        (first / "a").write_text("1")
        (second / "a").write_text("2")
    assert (two.path, one.path) == (target, tmp_path / "run-adapter-2")  # the first done (inner) takes the name
    assert (target / "a").read_text() == "2" and (tmp_path / "run-adapter-2" / "a").read_text() == "1"

    typed = AtomicFolder(tmp_path / "mine")
    with pytest.raises(ExportError, match="mine already exists: pick another name, such as mine-2"), typed as folder:
        (folder / "a").write_text("3")
        (tmp_path / "mine").mkdir()  # taken meanwhile, even empty: never replaced
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine", "run-adapter", "run-adapter-2"]


def test_card_and_adapter_config_name_the_embedded_models_hub_repo(workspace):
    folder = workspace.export("adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_REPO
    card = (folder / "README.md").read_text()
    front, body = card.split("\n---\n", 1)
    assert front.splitlines()[:3] == ["---", f"base_model: {HUB_REPO}", "base_model_relation: adapter"]
    assert f"- Base model: {HUB_REPO}\n" in body and "embedded" not in card


def info(name: str, path: str) -> ModelInfo:
    return ModelInfo(name, path, "hf", "cpu", "float32", "none", 1, 0.1, 0.1, True)


def test_base_model_is_the_hub_repo_or_an_honest_local_folder(tmp_path):
    snapshot = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B" / "snapshots" / "abc123"
    local = tmp_path / "my-model"
    for folder in (snapshot, local):
        folder.mkdir(parents=True)
    preset = "unsloth/DeepSeek-R1-Distill-Qwen-7B-bnb-4bit"
    assert base_model(info("embedded", str(embedded_model_dir()))).repo == HUB_REPO
    assert base_model(info(str(embedded_model_dir()), str(embedded_model_dir()))).repo == HUB_REPO
    assert base_model(info(preset, str(snapshot))).repo == preset  # the download cache is not the name
    assert base_model(info(str(snapshot), str(snapshot))).repo == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    mine = base_model(info(str(local), str(local)))
    assert mine.repo is None and mine.describe() == "my-model (a local folder, not on the Hub)"


def test_export_modes_are_a_plain_mkdir_and_open_s_under_the_umask(workspace, tmp_path):
    before = os.umask(0o002)  # not the usual 022: the modes must follow the umask, not be fixed numbers
    try:
        folder = workspace.export("adapter")
        archive = Path(shutil.make_archive(str(folder), "zip", folder))  # what the app offers to download
        (tmp_path / "plain-folder").mkdir()
        (tmp_path / "plain-file").write_text("")
    finally:
        os.umask(before)
    folder_mode, file_mode = mode(tmp_path / "plain-folder"), mode(tmp_path / "plain-file")
    assert (folder_mode, file_mode) == (0o775, 0o664)
    assert mode(folder) == folder_mode and mode(archive) == file_mode
    assert {path.name: mode(path) for path in folder.iterdir()} == {path.name: file_mode for path in folder.iterdir()}
    with zipfile.ZipFile(archive) as zipped:  # and unzipped, the files are not owner-only either
        assert {entry.external_attr >> 16 & 0o777 for entry in zipped.infolist()} == {file_mode}


def test_push_says_to_pick_an_export_when_there_are_some_and_to_export_first_when_not(tmp_path):
    workspace = Workspace(tmp_path / "runs")
    for nothing in ("", "..", "run-adapter"):
        with pytest.raises(WorkspaceError, match="^Nothing exported yet: export the model first"):
            workspace.push(nothing, "someone/model", "hf_token")
    for age, name in enumerate(["run-adapter", "run-gguf-q8-0"]):
        (workspace.exports_dir / name).mkdir(parents=True)
        (workspace.exports_dir / name / "README.md").write_text("card")
        os.utime(workspace.exports_dir / name, (1_000_000 + age, 1_000_000 + age))
    with pytest.raises(WorkspaceError) as unpicked:
        workspace.push("", "someone/model", "hf_token")
    assert str(unpicked.value) == "Pick an export to push: 2 exports are ready, the latest run-gguf-q8-0."
    with pytest.raises(WorkspaceError, match="^No export named 'gone': pick one of those ready .2 exports"):
        workspace.push("gone", "someone/model", "hf_token")
