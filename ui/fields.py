"""Form components that name themselves in every refusal.

Whatever reaches a handler from the page or the HTTP API (text for a number, None, inf, a value out of
range, an unknown choice, a lone surrogate, a garbled chat history), the visitor gets one sentence
naming the field, as a Gradio error, instead of Gradio's generic one. The ranges and lengths come
from the engine's settings (`finetune.bounds`), so a widget, the API and the dataclasses agree.
"""

from __future__ import annotations

import gradio as gr
import pydantic
from gradio.components.chatbot import ChatbotDataMessages

from finetune.bounds import Range, number_from, shorten, text_from


def _refuse(err: Exception) -> gr.Error:
    return gr.Error(str(err), print_exception=False)


class NumberField(gr.Number):
    """A number box over a `Range`: whole numbers arrive as int, the rest as float."""

    def __init__(self, value, *, bound: Range, **kwargs):
        super().__init__(value, minimum=bound.low, maximum=bound.high, precision=0 if bound.whole else None,
                         **kwargs)
        self.bound = bound

    def preprocess(self, payload):
        try:
            return number_from(payload, self.label, self.bound)
        except ValueError as err:
            raise _refuse(err) from None


class SliderField(gr.Slider):
    def __init__(self, value, *, bound: Range, **kwargs):
        kwargs.setdefault("step", 1 if bound.whole else 0.05)
        super().__init__(bound.low, bound.high, value, **kwargs)
        self.bound = bound

    def preprocess(self, payload):
        try:
            return number_from(payload, self.label, self.bound)
        except ValueError as err:
            raise _refuse(err) from None


class TextField(gr.Textbox):
    """A text box of at most `max_chars` characters (the page stops typing there; the API is refused)."""

    def __init__(self, value="", *, max_chars: int, **kwargs):
        super().__init__(value, max_length=max_chars, **kwargs)
        self.max_chars = max_chars

    def preprocess(self, payload):
        try:
            return text_from(payload, self.label, self.max_chars)
        except ValueError as err:
            raise _refuse(err) from None


class CheckboxField(gr.Checkbox):
    def preprocess(self, payload):
        if payload is not None and not isinstance(payload, bool):
            raise gr.Error(f"{self.label} must be true or false, not {shorten(repr(payload))}", print_exception=False)
        return bool(payload)


def _choice_preprocess(component, payload, parent):
    """A closed choice must be one offered (or nothing, where nothing picked is a choice the handler
    explains); a custom value (allow_custom_value) must be bounded text."""
    if payload is None and component.optional:
        return None
    if component.allow_custom_value:
        try:
            return text_from(payload, component.label, component.max_chars)
        except ValueError as err:
            raise _refuse(err) from None
    offered = [value for _, value in component.choices]
    if payload not in offered:
        raise gr.Error(f"{component.label} must be one of {', '.join(map(str, offered))}, not "
                       f"{shorten(repr(payload))}", print_exception=False)
    return parent.preprocess(component, payload)


class DropdownField(gr.Dropdown):
    # Named arguments only: Gradio's constructor wrapper drops positional ones it cannot name.
    def __init__(self, choices=None, *, max_chars: int = 200, optional: bool = False, **kwargs):
        super().__init__(choices, **kwargs)
        self.max_chars, self.optional = max_chars, optional

    def preprocess(self, payload):
        return _choice_preprocess(self, payload, gr.Dropdown)


class RadioField(gr.Radio):
    allow_custom_value = False
    optional = False

    def preprocess(self, payload):
        return _choice_preprocess(self, payload, gr.Radio)


class ChatPane(gr.Chatbot):
    """A chat whose history, sent back with each question, must be in Gradio's messages format."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        label = self.label

        class CheckedMessages(ChatbotDataMessages):
            @classmethod
            def model_validate(cls, obj, **validate_kwargs):
                try:
                    return ChatbotDataMessages.model_validate(obj, **validate_kwargs)
                except pydantic.ValidationError as err:
                    reason = err.errors()[0]["msg"]
                    raise gr.Error(f"{label}: the chat history is not a list of chat messages ({reason}); press "
                                   "Clear, or send [] to start a new conversation", print_exception=False) from None

        self.data_model = CheckedMessages  # checked before `preprocess`: Gradio validates the data model first
