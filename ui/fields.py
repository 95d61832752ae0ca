"""Form components that name themselves in every refusal.

Whatever reaches a handler from the page or the HTTP API (text for a number, None, inf, a value out of
range, an unknown choice, a lone surrogate, a garbled chat history), the visitor gets one sentence
naming the field, as a Gradio error, instead of Gradio's generic one. The ranges and lengths come
from the engine's settings (`finetune.bounds`), so a widget, the API and the dataclasses agree.
"""

from __future__ import annotations

import types

import gradio as gr
import pydantic
from gradio.components.chatbot import ChatbotDataMessages

from finetune.bounds import Range, number_from, shorten, text_from
from finetune.config import TEMPLATE_LABELS


def _refuse(err: Exception) -> gr.Error:
    return gr.Error(str(err), print_exception=False)


def _check_with(component, check):
    """Replace the component's `preprocess` with `check(component, payload)`. Not a subclass: Gradio builds
    the page's config from a class's constructor signature and names the widget after the class, and
    writes a stub file beside any component class it meets."""
    component.preprocess = types.MethodType(check, component)
    return component


def _number(component, payload):
    try:
        return number_from(payload, component.label, component.bound)
    except ValueError as err:
        raise _refuse(err) from None


def number_field(value, bound: Range, **kwargs) -> gr.Number:
    """A number box over `bound`: whole numbers arrive as int, the rest as float."""
    field = gr.Number(value, minimum=bound.low, maximum=bound.high, precision=0 if bound.whole else None, **kwargs)
    field.bound = bound
    return _check_with(field, _number)


def slider_field(value, bound: Range, **kwargs) -> gr.Slider:
    kwargs.setdefault("step", 1 if bound.whole else 0.05)
    field = gr.Slider(bound.low, bound.high, value, **kwargs)
    field.bound = bound
    return _check_with(field, _number)


def _text(component, payload):
    try:
        return text_from(payload, component.label, component.max_chars)
    except ValueError as err:
        raise _refuse(err) from None


def text_field(value: str = "", *, max_chars: int, **kwargs) -> gr.Textbox:
    """A text box of at most `max_chars` characters (the page stops typing there; the API is refused)."""
    field = gr.Textbox(value, max_length=max_chars, **kwargs)
    field.max_chars = max_chars
    return _check_with(field, _text)


def _flag(component, payload):
    if payload is not None and not isinstance(payload, bool):
        raise gr.Error(f"{component.label} must be true or false, not {shorten(repr(payload))}",
                       print_exception=False)
    return bool(payload)


def checkbox_field(value: bool, **kwargs) -> gr.Checkbox:
    return _check_with(gr.Checkbox(value, **kwargs), _flag)


def _choice(component, payload):
    """A closed choice must be one offered (or nothing, where nothing picked is a choice the handler
    explains); a custom value (allow_custom_value) must be bounded text."""
    if payload is None and component.optional:
        return None
    if getattr(component, "allow_custom_value", False):
        return _text(component, payload)
    offered = [value for _, value in component.choices]
    if payload not in offered:
        raise gr.Error(f"{component.label} must be one of {', '.join(map(str, offered))}, not "
                       f"{shorten(repr(payload))}", print_exception=False)
    return offered[offered.index(payload)]  # 8 for 8.0: the offered value itself


def dropdown_field(choices, *, max_chars: int = 200, optional: bool = False, **kwargs) -> gr.Dropdown:
    """A closed choice (or, with allow_custom_value, text of at most `max_chars`); `optional`: nothing picked
    reaches the handler as None, for it to explain."""
    field = gr.Dropdown(choices, **kwargs)
    field.max_chars, field.optional = max_chars, optional
    return _check_with(field, _choice)


def radio_field(choices, **kwargs) -> gr.Radio:
    field = gr.Radio(choices, **kwargs)
    field.optional = False
    return _check_with(field, _choice)


def labelled(labels: dict) -> list[tuple[str, object]]:
    """A widget's (label, value) choices from one of finetune.config's tables of value -> label."""
    return [(label, value) for value, label in labels.items()]


def prompt_template_field(**kwargs) -> gr.Radio:
    """How chat and evaluation prompt the model: as its run was trained ('auto'), or with a template named."""
    return radio_field([("Same as training", "auto"), *labelled(TEMPLATE_LABELS)], value="auto",
                       label="Prompt template", **kwargs)


def chat_pane(**kwargs) -> gr.Chatbot:
    """A chat whose history, sent back with each question, must be in Gradio's messages format."""
    pane = gr.Chatbot(**kwargs)
    label = pane.label

    class CheckedMessages(ChatbotDataMessages):
        @classmethod
        def model_validate(cls, obj, **validate_kwargs):
            try:
                return ChatbotDataMessages.model_validate(obj, **validate_kwargs)
            except pydantic.ValidationError as err:
                reason = err.errors()[0]["msg"]
                raise gr.Error(f"{label}: the chat history is not a list of chat messages ({reason}); press "
                               "Clear, or send [] to start a new conversation", print_exception=False) from None

    pane.data_model = CheckedMessages  # checked before `preprocess`: Gradio validates the data model first
    return pane
