"""The Chat tab: one question, answered by the base model (adapter off) and the fine-tuned one side by side.

Each visitor's conversation lives in their page (the two Chatbot values), never on the server; the one
model is shared, so a reply streams while other visitors wait their turn (concurrency id "model").
"""

from __future__ import annotations

import gradio as gr

from finetune.bounds import range_of
from finetune.generate.chat import conversation, status_line
from finetune.generate.reply import GenerationSettings
from ui.errors import VISITOR_ERRORS, refusal
from ui.fields import (
    chat_pane,
    dropdown_field,
    number_field,
    prompt_template_field,
    radio_field,
    slider_field,
    text_field,
)
from ui.workspace import Workspace

EXAMPLE_QUESTIONS = [
    "A 24-year-old has fever, neck stiffness and a petechial rash. What is the next step?",
    "A 67-year-old on warfarin has an INR of 9 and no bleeding. How should this be managed?",
    "A 30-year-old woman has palpitations, weight loss, heat intolerance and a diffuse goitre. What is the likely "
    "diagnosis?",
    "A 55-year-old smoker has crushing chest pain for 40 minutes and ST elevation in II, III and aVF. Which artery "
    "is most likely occluded?",
]
CHAT_MODES = {"Base vs fine-tuned": ("base", "finetuned"), "Fine-tuned only": ("finetuned",), "Base only": ("base",)}
"""What the Compare radio offers: the panes that answer."""


def chat_tab(demo: gr.Blocks, workspace: Workspace, device: str) -> None:
    defaults = GenerationSettings.for_device(device)
    limits = workspace.text_limits
    # The not-medical-advice banner is above the tabs, once.
    with gr.Tab("Chat", id="chat") as tab:
        runs = workspace.chat_runs()
        with gr.Row():
            mode = radio_field(list(CHAT_MODES), value="Base vs fine-tuned", label="Compare", scale=2)
            run_picker = dropdown_field(runs.runs, optional=True, label="Fine-tuned run", elem_id="chat-run",
                                 value=runs.current if runs.current in runs.runs else None,
                                 info="Whose adapter the fine-tuned pane answers with", scale=1)
        with gr.Row():
            base_chat = chat_pane(label="Base model (adapter off)", elem_id="chat-base", height=460, buttons=["copy"])
            tuned_chat = chat_pane(label=runs.title, elem_id="chat-tuned", height=460, buttons=["copy"])
        question = text_field(max_chars=limits.message, label="Question",
                              placeholder="Describe a clinical case or ask a question…", lines=2, elem_id="question")
        with gr.Row():
            send_button = gr.Button("Send", variant="primary", elem_id="send")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop-chat")
            clear_button = gr.Button("Clear")
        status = gr.Markdown(elem_id="chat-status")
        gr.Examples(EXAMPLE_QUESTIONS, inputs=question, label="Example questions")
        with gr.Accordion("Generation settings (DeepSeek-R1 defaults)", open=False):
            with gr.Row():
                max_new_tokens = slider_field(defaults.max_new_tokens, range_of(GenerationSettings, "max_new_tokens"),
                                              label="Max new tokens (reasoning included)", elem_id="max-new-tokens")
                temperature = slider_field(defaults.temperature, range_of(GenerationSettings, "temperature"),
                                           label="Temperature (0: greedy)")
                top_p = slider_field(defaults.top_p, range_of(GenerationSettings, "top_p"), label="Top-p")
                repetition_penalty = slider_field(defaults.repetition_penalty,
                                                  range_of(GenerationSettings, "repetition_penalty"),
                                                  label="Repetition penalty")
                seed = number_field(defaults.seed, range_of(GenerationSettings, "seed"),
                                    label="Seed (same for both panes)")
            with gr.Row():
                template = prompt_template_field()
                system_prompt = text_field(defaults.system_prompt, max_chars=limits.system_prompt,
                                           label="System prompt (R1 advice: leave empty)")
    # /chat's parameters after the question, the two panes and the mode: GenerationSettings' fields, by name.
    generation = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                  "repetition_penalty": repetition_penalty, "seed": seed, "template": template,
                  "system_prompt": system_prompt}

    def ask(text, base_messages, tuned_messages, mode_name, request: gr.Request, **settings):
        panes = CHAT_MODES[mode_name]
        chats = {"base": list(base_messages), "finetuned": list(tuned_messages)}
        question_message = {"role": "user", "content": text.strip()}
        try:
            histories = {pane: conversation(chats[pane]) for pane in panes}
            replies = {}
            first = True
            for shown in workspace.chat(text, GenerationSettings(**settings), panes, histories, request.session_hash,
                                        replies):
                base, tuned = (chats[p] + ([question_message, *shown[p]] if p in shown else [])
                               for p in ("base", "finetuned"))
                # The question box is emptied once: later updates would wipe a next question being typed.
                yield base, tuned, "" if first else gr.skip(), status_line(replies)
                first = False
        except VISITOR_ERRORS as err:
            yield chats["base"], chats["finetuned"], text, refusal(workspace, err)

    def stop(request: gr.Request):
        workspace.stop_chat(request.session_hash)

    def show_panes(mode_name):
        panes = CHAT_MODES[mode_name]
        return gr.update(visible="base" in panes), gr.update(visible="finetuned" in panes)

    def runs_view(chat_runs):
        """The run picker and the fine-tuned pane's label, which names the run that answers."""
        value = chat_runs.current if chat_runs.current in chat_runs.runs else None
        return gr.update(choices=chat_runs.runs, value=value), gr.update(label=chat_runs.title)

    def show_runs():
        return runs_view(workspace.chat_runs())

    def use_run(run):
        try:
            chat_runs = workspace.use_run(run)
        except VISITOR_ERRORS as err:
            return *runs_view(workspace.chat_runs()), refusal(workspace, err)
        return *runs_view(chat_runs), f"✓ The fine-tuned pane answers with {chat_runs.current} now."

    asked = [question, base_chat, tuned_chat, mode]
    answered = [base_chat, tuned_chat, question, status]
    send_button.click(ask, asked, answered, inputs_kwargs=generation, api_name="chat", concurrency_id="model",
                      concurrency_limit=1)
    question.submit(ask, asked, answered, inputs_kwargs=generation, api_name=False, concurrency_id="model",
                    concurrency_limit=1)
    # Stop ends this visitor's reply; the stream then closes its bubble and says it was stopped.
    stop_button.click(stop, None, None, api_name="stop_chat")
    clear_button.click(lambda: ([], [], ""), None, [base_chat, tuned_chat, status], api_name=False)
    mode.change(show_panes, mode, [base_chat, tuned_chat], api_name=False)
    # The fine-tuned pane names its run; the picker puts another run's adapter on (a visitor's pick only:
    # `input`, not `change`, so the refresh on selecting the tab puts nothing on).
    tab.select(show_runs, None, [run_picker, tuned_chat], api_name="chat_runs")
    run_picker.input(use_run, run_picker, [run_picker, tuned_chat, status], api_name="use_run")
    demo.load(show_runs, None, [run_picker, tuned_chat], api_name=False)
