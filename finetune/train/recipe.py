"""A recipe: every setting of one run in one YAML file, for `python -m finetune train --config`.

    model:  {name: unsloth/DeepSeek-R1-Distill-Llama-8B-bnb-4bit}
    data:   {source: medical-o1, split: "train[0:500]", template: plain}
    train:  {max_steps: 60, learning_rate: 2.0e-4, micro_batch_size: 2, grad_accum_steps: 4}
    lora:   {r: 16, alpha: 16}
    output: runs/seeds-llama-8b

Each section holds the fields of one settings class (`ModelSettings`, `DataSettings`,
`TrainSettings`, `LoraSettings`); a field left out keeps the device's default, the same default
the Train tab shows. Every run writes the recipe it ran as `recipe.yaml` into its folder, so any
run can be repeated with `--config runs/<name>/recipe.yaml`. Examples: `recipes/`.

The length rows are cut at is `model.max_length`, the one length of a run; a recipe written
before it moved there (`train: {max_length: …}`) still loads, the length moved to the model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings, lora_for_device


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the setting."""


@dataclass
class Recipe:
    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    lora: LoraSettings
    output: str | None = None
    """The run folder; the command line's --output wins."""


SECTIONS = {"model": ModelSettings, "data": DataSettings, "train": TrainSettings, "lora": LoraSettings}


def default_recipe(device: str) -> Recipe:
    """What the Train tab and the CLI start from on this device: its model and training defaults, and a
    hold-out sized to the data (`holdout_rows: null` in a recipe; finetune.data.sources.holdout_plan)."""
    return Recipe(ModelSettings.for_device(device), DataSettings(holdout_rows=None), TrainSettings.for_device(device),
                  lora_for_device(device))


def load_recipe(path: str | Path, device: str) -> Recipe:
    """Read a recipe file on top of the device's defaults; RecipeError names any bad setting."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(document, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with the sections {', '.join(SECTIONS)} and output")
    unknown = sorted(set(document) - {*SECTIONS, "output"})
    if unknown:
        raise RecipeError(f"{path}: unknown section {unknown[0]!r}; the sections are {', '.join(SECTIONS)} and output")
    changes = _length_in_model({name: document.get(name) or {} for name in SECTIONS}, str(path))
    recipe = with_changes(default_recipe(device), changes, str(path))
    output = document.get("output")
    return dataclasses.replace(recipe, output=str(output) if output is not None else None)


def _length_in_model(changes: dict, where: str) -> dict:
    """An older recipe's `train.max_length` as `model.max_length`, where the one length lives now (a run
    folder's recipe.yaml of then holds both, the same), so old recipes and runs still load."""
    train, model = changes["train"], changes["model"]
    if not (isinstance(train, dict) and "max_length" in train):
        return changes
    train = dict(train)
    length = train.pop("max_length")
    if isinstance(model, dict) and model.get("max_length", length) != length:
        raise RecipeError(f"{where}: train.max_length ({length}) and model.max_length ({model['max_length']}) "
                          "disagree; rows are cut at model.max_length: keep that one only")
    if isinstance(model, dict):
        model = {**model, "max_length": length}
    return {**changes, "train": train, "model": model}


def with_changes(recipe: Recipe, changes: dict[str, dict], where: str = "recipe") -> Recipe:
    """The recipe with some fields replaced, each checked and converted to its field's type."""
    sections = {}
    for name, settings in ((name, getattr(recipe, name)) for name in SECTIONS):
        section = changes.get(name) or {}
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: section {name!r} must be a mapping of settings, not {section!r}")
        known = {f.name: f for f in fields(settings)}
        hints = typing.get_type_hints(type(settings))
        values = {}
        for key, value in section.items():
            if key not in known:
                raise RecipeError(f"{where}: {name}.{key} is not a setting; {name} has {', '.join(known)}")
            values[key] = _convert(value, hints[key], f"{where}: {name}.{key}")
        try:
            sections[name] = dataclasses.replace(settings, **values)  # runs each class's own checks
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{where}: {name}: {err}") from err
    return dataclasses.replace(recipe, **sections)


def _convert(value, hint, where: str):
    """YAML gives str/int/float/list/dict; make each match its field (e.g. '2e-4' is a str in YAML 1.1)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [kind for kind in (typing.get_args(hint) if union else (hint,)) if kind is not type(None)]
    if value is None:
        if union and len(kinds) < len(typing.get_args(hint)):
            return None
        raise RecipeError(f"{where} cannot be empty")
    kind = typing.get_origin(kinds[0]) or kinds[0]
    if kind is typing.Literal:  # a closed vocabulary of text (e.g. DataSettings.template): the class names it
        kind = str
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in (int, float) and not isinstance(value, bool):
            number = float(value)
            if kind is int and not number.is_integer():
                raise ValueError
            return kind(number)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items)
        if kind is dict and isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        if kind is str and isinstance(value, (str, int, float)):
            return str(value)
    except (TypeError, ValueError):
        pass
    raise RecipeError(f"{where} must be {_kind_name(kind)}, not {value!r}")


def _kind_name(kind) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", tuple: "a list", dict: "a mapping",
            str: "text"}.get(kind, str(kind))


def recipe_dict(recipe: Recipe) -> dict:
    """The recipe as plain data, every field written out (what `recipe.yaml` in a run folder holds)."""
    document = {name: _plain(dataclasses.asdict(getattr(recipe, name))) for name in SECTIONS}
    if recipe.output is not None:
        document["output"] = recipe.output
    return document


def _plain(values: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    header = "# The recipe of this run: python -m finetune train --config <this file> repeats it.\n"
    Path(path).write_text(header + yaml.safe_dump(recipe_dict(recipe), sort_keys=False, allow_unicode=True))
