"""Export: the adapter and a merged 16-bit model reload and answer like the trained model; nothing half-written."""

import json

import pytest
import torch
from conftest import trained_looking_adapter

from finetune.config import ModelSettings
from finetune.export.save import ExportError, atomic_folder, export_model
from finetune.models.adapters import load_adapter
from finetune.models.load import load_model


def logits(model, tokenizer):
    ids = tokenizer("What is the antidote for heparin overdose?", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_merged_16bit_loads_with_plain_transformers_and_answers_alike(loaded, tmp_path):
    from transformers import AutoModelForCausalLM

    trained_looking_adapter(loaded)
    folder = export_model(loaded, tmp_path / "merged", "merged_16bit")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert not hasattr(merged, "peft_config")
    ours, theirs = logits(loaded.model, loaded.tokenizer), logits(merged, loaded.tokenizer)
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() == 1.0  # same next token everywhere
    assert (ours - theirs).abs().max() < 0.02 * ours.abs().max()  # within bf16 rounding
    with torch.no_grad():  # and it generates, as a plain model
        assert merged.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape[1] == 7
    assert "Not medical advice" in (folder / "README.md").read_text()


def test_adapter_export_reloads_to_the_same_logits(loaded, tmp_path):
    trained_looking_adapter(loaded)
    folder = export_model(loaded, tmp_path / "adapter", "adapter")
    fresh = load_model(ModelSettings())
    load_adapter(fresh, folder)
    fresh.model.eval()
    torch.testing.assert_close(logits(fresh.model, fresh.tokenizer), logits(loaded.model, loaded.tokenizer))


def test_a_failed_export_leaves_no_folder(loaded, tmp_path, monkeypatch):
    trained_looking_adapter(loaded)

    def full_disk(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(loaded.tokenizer, "save_pretrained", full_disk)  # after the weights were written
    with pytest.raises(OSError, match="disk full"):
        export_model(loaded, tmp_path / "out", "merged_16bit")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a partial folder


def test_export_refuses_clearly(loaded, tmp_path):
    with pytest.raises(ExportError, match="No adapter on the model"):
        export_model(loaded, tmp_path / "x", "adapter")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"), atomic_folder(tmp_path / "taken"):
        pass
