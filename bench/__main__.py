"""Speed benchmark: training throughput and memory, chat latency; hf vs unsloth vs ours.

    python -m bench train --model qwen-1.5b --steps 12 --warmup 3 --out bench/results/train-qwen.json
    python -m bench chat --model qwen-1.5b --new-tokens 256
    python -m bench train --model embedded --steps 6 --warmup 2      # CPU: hf vs ours
    python -m bench curve --model qwen-1.5b --steps 30 --seeds 2     # same loss curve on real text?
    python -m bench learn --out docs/bench-results/learn-embedded-cpu.json  # does the demo teach? (bench/learn.py)

Each variant runs in its own process (Unsloth patches transformers for the whole process; `hf`
runs with FINETUNE_NO_UNSLOTH=1). One JSON object per variant goes to --out, and a table is
printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.learn import GENERATE_ROWS
from bench.learn import main as learn_main
from bench.workload import MODELS
from finetune.models.backend import default_device, import_unsloth_first

VARIANTS = ("hf", "unsloth", "ours")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("bench", choices=["train", "chat", "curve", "learn", "one"])
    parser.add_argument("--model", choices=list(MODELS), default="embedded")
    parser.add_argument("--variants", default=None, help="comma-separated; default hf,unsloth,ours (CPU: hf,ours)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput")
    parser.add_argument("--max-length", type=int, default=None, help="default 2048 (CPU: 512)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=2, help="curve: runs per variant (row orders)")
    parser.add_argument("--out", default=None, help="write the results as a JSON list here")
    parser.add_argument("--log-dir", default=None, help="keep each variant's output (stderr included) here")
    learn = parser.add_argument_group("learn (the default demo, base vs fine-tuned on real medical-o1 rows)")
    learn.add_argument("--recipe", default=None, help="default recipes/embedded-cpu-demo.yaml")
    learn.add_argument("--eval-file", default=None, help="default ../shared/data/medical_o1_sample.jsonl")
    learn.add_argument("--eval-rows", type=int, default=None, help="the first N real rows (default all)")
    learn.add_argument("--generate-rows", type=int, default=GENERATE_ROWS,
                       help=f"of these, the first N answered (default {GENERATE_ROWS})")
    learn.add_argument("--train-steps", type=int, default=None, help="default: the recipe's")
    learn.add_argument("--eval-new-tokens", type=int, default=None, help="default: the device's evaluation default")
    parser.add_argument("--what", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bench == "one":  # inside a child process: one measurement, one JSON line
        print("BENCH " + json.dumps(measure_one(args)), flush=True)
        return
    if args.bench == "learn":  # one process: it trains and evaluates one model
        learn_main(args)
        return
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    seeds = range(args.seeds) if args.bench == "curve" else [0]
    results = [run_variant(args, variant, seed) for variant in chosen_variants(args) for seed in seeds]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))


def chosen_variants(args) -> list[str]:
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if default_device() != "cuda":
        variants = [v for v in variants if v != "unsloth"]  # Unsloth needs a CUDA GPU
    return variants


def measure_one(args) -> dict:
    import_unsloth_first()
    from bench.measure import device, run_chat, run_curve, run_train  # after Unsloth: it patches transformers

    max_length = args.max_length or (2048 if device() == "cuda" else 512)
    if args.what == "train":
        return run_train(args.variant, args.model, args.steps, args.warmup, max_length)
    if args.what == "curve":
        return run_curve(args.variant, args.model, args.steps, args.seed, max_length)
    return run_chat(args.variant, args.model, args.new_tokens)


def run_variant(args, variant: str, seed: int = 0) -> dict:
    command = [sys.executable, "-m", "bench", "one", "--what", args.bench, "--variant", variant,
               "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--new-tokens", str(args.new_tokens), "--seed", str(seed)]
    if args.max_length:
        command += ["--max-length", str(args.max_length)]
    env = dict(os.environ)
    if variant == "hf":
        env["FINETUNE_NO_UNSLOTH"] = "1"
    print(f"[bench] {args.bench} {variant} on {args.model} …", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        Path(args.log_dir, f"{args.bench}-{variant}-{seed}-{args.model}.log").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"bench": args.bench, "variant": variant, "model": args.model, "error": tail[0][:300]}
    return json.loads(lines[-1].removeprefix("BENCH "))


def table(results: list[dict]) -> str:
    """A Markdown table of the results, with each variant's speed relative to the first one."""
    if not results:
        return "no results"
    if results[0]["bench"] == "curve":
        return curve_table(results)
    train = results[0]["bench"] == "train"
    key = "tokens_per_s" if train else "decode_tokens_per_s"
    base = next((r[key] for r in results if key in r), None)
    if train:
        head = "| variant | backend | batch | tokens/s | vs first | s/step | peak GB | load s |\n" + "|---" * 8 + "|"
    else:
        head = "| variant | decoder | first token s | decode tokens/s | vs first | peak GB |\n" + "|---" * 6 + "|"
    lines = [f"{results[0]['model']} on {results[0].get('device', '?')}", "", head]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |")
            continue
        ratio = f"{r[key] / base:.2f}x" if base else "-"
        if train:
            recipe = r["recipe"]
            batch = f"{recipe['micro_batch_size']}x{recipe['grad_accum_steps']} {recipe['sampling']}"
            lines.append(f"| {r['variant']} | {r['backend']} | {batch} | {r['tokens_per_s']:,.0f} | {ratio} | "
                         f"{r['s_per_step']} | {r['peak_memory_gb']} | {r['load_s']} |")
        else:
            lines.append(f"| {r['variant']} | {r.get('decoder', r['backend'])} | {r['first_token_s']} | "
                         f"{r['decode_tokens_per_s']} | {ratio} | {r['peak_memory_gb']} |")
    return "\n".join(lines)


def curve_table(results: list[dict]) -> str:
    """Held-out loss per run, then each variant's mean and the spread between its seeds."""
    lines = [f"{results[0]['model']} on {results[0].get('device', '?')}, real text", "",
             "| variant | seed | batch | held-out loss before | after | mean of last 5 step losses |",
             "|---" * 6 + "|"]
    by_variant: dict[str, list[float]] = {}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |")
            continue
        recipe = r["recipe"]
        batch = f"{recipe['micro_batch_size']}x{recipe['grad_accum_steps']} {recipe['sampling']}"
        last = r["losses"][-5:]
        lines.append(f"| {r['variant']} | {r['seed']} | {batch} | {r['held_out_loss_before']} | "
                     f"{r['held_out_loss_after']} | {sum(last) / len(last):.4f} |")
        by_variant.setdefault(r["variant"], []).append(r["held_out_loss_after"])
    lines.append("")
    for variant, losses in by_variant.items():
        lines.append(f"{variant}: held-out loss after {sum(losses) / len(losses):.4f} "
                     f"(seeds span {max(losses) - min(losses):.4f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
