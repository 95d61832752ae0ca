"""Command line chat: stream a reasoning model's answer, the thinking apart from the final answer.

    python -m inference --model embedded "What is the first-line treatment of anaphylaxis?"
    python -m inference --model embedded --adapter runs/demo --json "question"
    python -m inference --adapter runs/demo --compare "question"     # base, then fine-tuned

Outputs are not medical advice.
"""

from __future__ import annotations

import argparse
import json
import sys

from finetune.config import TEMPLATES
from finetune.models.backend import import_unsloth_first


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n")[0])
    parser.add_argument("question")
    parser.add_argument("--model", default="embedded", help="'embedded', a Hub repo id or a local folder")
    parser.add_argument("--adapter", default=None, help="a run folder or adapter folder from python -m finetune")
    parser.add_argument("--json", action="store_true", help="print one JSON object with thinking and answer")
    parser.add_argument("--compare", action="store_true", help="answer with the base model, then the fine-tuned")
    parser.add_argument("--template", choices=TEMPLATES, default=None, help="default: the adapter's, else chat")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="the reply's limit, reasoning included (default: GenerationSettings for the device)")
    parser.add_argument("--temperature", type=float, default=None, help="default 0.6 (R1 advice); 0: greedy")
    parser.add_argument("--top-p", type=float, default=None, help="default 0.95 (R1 advice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system-prompt", default="")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--decoder", choices=("fast", "generate"), default="fast",
                        help="fast: merged weights, static cache, CUDA graphs (where the model allows); "
                             "generate: transformers' generate")
    return parser


def _stream_to_terminal(replies) -> dict:
    """Print thinking, then the answer, as they grow; return the final reply as a dict."""
    shown_thinking = shown_answer = 0
    final = None
    for reply in replies:
        if len(reply.thinking) > shown_thinking:
            if shown_thinking == 0:
                print("[thinking]", flush=True)
            print(reply.thinking[shown_thinking:], end="", flush=True)
            shown_thinking = len(reply.thinking)
        if len(reply.answer) > shown_answer:
            if shown_answer == 0:
                print("\n[answer]" if shown_thinking else "[answer]", flush=True)
            print(reply.answer[shown_answer:], end="", flush=True)
            shown_answer = len(reply.answer)
        final = reply
    print(flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import_unsloth_first()
    from finetune.quiet import quiet_libraries

    quiet_libraries()
    from finetune.config import ModelSettings
    from finetune.generate.reply import ContextTooLong, GenerationSettings, stream_reply
    from finetune.models.adapters import load_adapter, read_run_template
    from finetune.models.backend import default_device
    from finetune.models.load import ModelLoadError, load_model

    given = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
    try:
        settings = GenerationSettings.for_device(
            default_device(),
            **{name: value for name, value in given.items() if value is not None},
            seed=args.seed,
            system_prompt=args.system_prompt,
            template=args.template or (read_run_template(args.adapter) if args.adapter else "chat"),
            fast=args.decoder == "fast",
        )
        loaded = load_model(ModelSettings(args.model, load_in_4bit=args.load_in_4bit))
        if args.adapter:
            load_adapter(loaded, args.adapter)
    except (ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = [("base", False), ("fine-tuned", True)] if args.compare and args.adapter else [(None, True)]
    results = {}
    for label, use_adapter in runs:
        replies = stream_reply(loaded, args.question, settings, use_adapter=use_adapter)
        try:
            if args.json:
                *_, final = replies
            else:
                if label:
                    print(f"=== {label} ===", flush=True)
                final = _stream_to_terminal(replies)
        except ContextTooLong as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        results[label or "reply"] = {
            "thinking": final.thinking,
            "answer": final.answer,
            "thinking_closed": final.thinking_done,
            "tokens": final.tokens,
            "seconds": final.seconds,
            "decoder": final.decoder,
        }
        if not args.json:
            print(f"({final.tokens} tokens in {final.seconds:.1f} s, {final.decoder})", file=sys.stderr)
    if args.json:
        print(json.dumps(results["reply"] if len(results) == 1 else results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
