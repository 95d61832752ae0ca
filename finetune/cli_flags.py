"""Command-line flags made from the settings dataclasses, so that a new setting is written once.

    add_settings(parser, [Section("train", {"cpu": TrainSettings.for_device("cpu"), ...})])
    given(parser.parse_args(["--lr", "1e-4"]))  # {"train": {"learning_rate": 0.0001}}

Each field of a settings class becomes one flag:
- its name is the field's with dashes (`warmup_steps`: `--warmup-steps`), unless SPELLINGS keeps the
  flag's older name (`learning_rate`: `--lr`);
- its type comes from the annotation: a bool is `--flag/--no-flag`, a Literal takes its values only,
  a number is checked against its range (`finetune.bounds`) and, if it may be None, also takes a word
  for None (`--holdout auto`), a tuple is comma-separated, a dict is key=value pairs;
- its help is the first paragraph of the field's docstring (the string under it in the class), then
  its range and its default: the value the command starts from, by device where that differs;
- two fields of one command with the same flag name share it: `--seed` sets train.seed and lora.seed.

A flag left out sets nothing: `given(args)` holds only what was on the command line, so a recipe's
setting stays unless a flag written out replaces it, even one that says what the default says.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import itertools
import textwrap
import types
import typing
from dataclasses import dataclass, fields

from finetune.bounds import Range, check_number
from finetune.config import TEMPLATES

DEVICES = ("cpu", "cuda")
GIVEN = "given"
"""The attribute of the parsed arguments that holds the settings written on the command line."""


@dataclass(frozen=True)
class Spelling:
    """How one field reads on the command line where the field's own name and type do not say it."""

    flag: str | None = None
    """The flag's name where it is not the field's (kept from before the flags were generated)."""
    none: str = "auto"
    """For a field that may be None: the word for None on the command line."""
    metavar: str | None = None
    words: dict[str, object] | None = None
    """The flag takes one of these words, each standing for a value (`--decoder generate`: fast=False)."""
    choices: tuple[str, ...] | None = None
    """A closed vocabulary for a field annotated `str` rather than with its Literal."""
    shown: str | None = None
    """The default in --help where the command works it out when it runs (e.g. from the adapter's run)."""


SPELLINGS: dict[str, Spelling] = {
    "ModelSettings.name": Spelling("--model"),
    "DataSettings.source": Spelling("--dataset"),
    "DataSettings.max_rows": Spelling(none="all"),
    "DataSettings.holdout_rows": Spelling("--holdout", metavar="ROWS"),
    "TrainSettings.micro_batch_size": Spelling("--batch-size"),
    "TrainSettings.grad_accum_steps": Spelling("--grad-accum"),
    "TrainSettings.learning_rate": Spelling("--lr"),
    "TrainSettings.lr_scheduler": Spelling("--scheduler"),
    "TrainSettings.max_steps": Spelling(none="0"),
    "TrainSettings.fp8_matmuls": Spelling("--fp8"),
    "LoraSettings.r": Spelling("--lora-r"),
    "LoraSettings.alpha": Spelling("--lora-alpha"),
    "LoraSettings.dropout": Spelling("--lora-dropout"),
    "LoraSettings.use_rslora": Spelling("--rslora"),
    "EvalSettings.limit": Spelling(none="all"),
    "EvalSettings.template": Spelling(choices=TEMPLATES, shown="the adapter's, else chat"),
    "GenerationSettings.template": Spelling(choices=TEMPLATES, shown="the adapter's, else chat"),
    "GenerationSettings.fast": Spelling("--decoder", words={"fast": True, "generate": False}),
    "EvalSettings.fast": Spelling("--decoder", words={"fast": True, "generate": False}),
}
"""Keyed by "Class.field". The rest of a field's flag comes from the field itself."""


@dataclass(frozen=True)
class Section:
    """One settings object of a command: its name in `given` (and in a recipe), and what the command
    starts from on each device, which --help states as the default."""

    name: str
    defaults: dict[str, object]

    @property
    def settings_class(self) -> type:
        return type(self.defaults[DEVICES[0]])


def add_settings(parser: argparse.ArgumentParser, sections: list[Section]) -> None:
    """A flag for every field of every section; fields whose flags share a name share one flag."""
    targets: dict[str, list[tuple[Section, str]]] = {}
    for section in sections:
        for item in fields(section.settings_class):
            targets.setdefault(flag_of(section.settings_class, item.name), []).append((section, item.name))
    for flag, fields_set in targets.items():
        section, name = fields_set[0]  # the first names the type, the help and the default
        parser.add_argument(flag, targets=tuple((s.name, n) for s, n in fields_set),
                            **_argument(section, name, flag))


def given(args: argparse.Namespace) -> dict[str, dict]:
    """The settings written on the command line, by section: {"train": {"learning_rate": 1e-4}}."""
    return {section: dict(values) for section, values in getattr(args, GIVEN, {}).items()}


def flag_of(settings_class: type, name: str) -> str:
    return _spelling(settings_class, name).flag or "--" + name.replace("_", "-")


def _spelling(settings_class: type, name: str) -> Spelling:
    return SPELLINGS.get(f"{settings_class.__name__}.{name}", Spelling())


@functools.cache
def field_docs(settings_class: type) -> dict[str, str]:
    """Each field's docstring: the string literal right under the field in the class's source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(settings_class))).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_help(settings_class: type, name: str) -> str:
    """The first paragraph of the field's docstring, on one line; the field's name where it has none."""
    doc = field_docs(settings_class).get(name, "")
    return " ".join(doc.split("\n\n")[0].split()) or name.replace("_", " ")


def _argument(section: Section, name: str, flag: str) -> dict:
    """add_argument's keywords for one field: action, type, choices, metavar and help."""
    settings_class = section.settings_class
    spelling = _spelling(settings_class, name)
    kind, optional = _unwrap(typing.get_type_hints(settings_class)[name])
    bound: Range | None = next(item for item in fields(settings_class) if item.name == name).metadata.get("range")
    metavar = spelling.metavar or flag.lstrip("-").upper().replace("-", "_")
    notes = []
    if spelling.words:
        keywords = {"action": _Store, "type": _word(spelling.words), "metavar": "{" + ",".join(spelling.words) + "}"}
    elif kind is bool:
        keywords = {"action": _Switch}
    elif typing.get_origin(kind) is typing.Literal or spelling.choices:
        keywords = {"action": _Store, "choices": spelling.choices or typing.get_args(kind)}
    elif kind in (int, float):
        word = spelling.none if optional else None
        keywords = {"action": _Store, "type": _number(kind, bound, word, spelling.metavar),
                    "metavar": f"{metavar}|{word}" if word else metavar}
        if bound:
            notes.append(f"{_figure(bound.low)} to {_figure(bound.high)}" + (f", or {word}" if word else ""))
    elif typing.get_origin(kind) is tuple:
        keywords = {"action": _Store, "type": _items, "metavar": "A,B,..."}
    elif typing.get_origin(kind) is dict:
        keywords = {"action": _Store, "type": key_values, "metavar": "KEY=VALUE,..."}
    else:
        keywords = {"action": _Store, "metavar": metavar}
    values = {device: getattr(settings, name) for device, settings in section.defaults.items()}
    notes.append("default: " + (spelling.shown or by_device({device: shown(value, spelling)
                                                              for device, value in values.items()})))
    help_text = f"{field_help(settings_class, name)} ({'; '.join(notes)})"
    return {**keywords, "help": help_text.replace("%", "%%")}  # argparse %-formats help


def _unwrap(hint) -> tuple[object, bool]:
    """(the type, whether None is allowed) of an annotation such as `int | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
        return kinds[0], len(kinds) < len(typing.get_args(hint))
    return hint, False


def _number(kind: type, bound: Range | None, none: str | None, metavar: str | None):
    """A parser for a number flag: checked against the field's range; `none` (a word) stands for None."""
    def parse(text: str):
        if none is not None and text.strip().lower() == none:
            return None
        try:
            value = kind(text)
        except ValueError:
            if none is None or none.isdigit():  # a number standing for None (--max-steps 0): a plain int flag
                raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
            what = f"a number of {metavar.lower()}" if metavar else "a number"
            raise argparse.ArgumentTypeError(f"expected {what} or {none}, got {text!r}") from None
        if bound is not None:
            try:
                check_number(value, "", bound)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err).strip()) from None
        return value

    return parse


def _word(words: dict[str, object]):
    def parse(text: str):
        if text not in words:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(words)})")
        return words[text]

    return parse


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def key_values(text: str) -> dict[str, str]:
    """role=column pairs, `question=Q,answer=A`, as a dict."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected role=column pairs like question=Q,answer=A, got {text!r}")
    return dict(pairs)


def by_device(values: dict[str, str]) -> str:
    """A default that may differ by device: '0.002 on CPU, 0.0002 on a GPU', or '0.0002'."""
    cpu, gpu = values["cpu"], values["cuda"]
    return cpu if cpu == gpu else f"{cpu} on CPU, {gpu} on a GPU"


def shown(value, spelling: Spelling | None = None) -> str:
    """A setting's value as the command line writes it."""
    spelling = spelling or Spelling()
    if spelling.words:
        return next(word for word, meant in spelling.words.items() if meant == value)
    if value is None:
        return spelling.none
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{key}={column}" for key, column in value.items()) or "none"
    return str(value) if value != "" else "none"


def _figure(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _remember(namespace: argparse.Namespace, targets: tuple[tuple[str, str], ...], value) -> None:
    if getattr(namespace, GIVEN, None) is None:
        setattr(namespace, GIVEN, {})
    for section, name in targets:
        getattr(namespace, GIVEN).setdefault(section, {})[name] = value


class _Store(argparse.Action):
    """Stores a setting in `given` only when the flag is written out (nothing when left out)."""

    def __init__(self, option_strings, dest, targets=(), **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.targets = targets

    def __call__(self, parser, namespace, values, option_string=None):
        _remember(namespace, self.targets, values)


class _Switch(argparse.BooleanOptionalAction):
    """--flag / --no-flag, stored like `_Store`."""

    def __init__(self, option_strings, dest, targets=(), **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.targets = targets

    def __call__(self, parser, namespace, values, option_string=None):
        _remember(namespace, self.targets, not option_string.startswith("--no-"))
