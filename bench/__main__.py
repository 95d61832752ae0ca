"""Speed benchmark: training throughput and memory, chat latency, evaluation throughput, the demo end to end;
hf vs unsloth (the seeds' 2 x 4) vs unsloth-best (Unsloth at 8 x 1, the same effective batch) vs ours.

    python -m bench train --model qwen-1.5b --steps 12 --warmup 3 --out bench/results/train-qwen.json
    python -m bench chat --model qwen-1.5b --new-tokens 256
    python -m bench eval --model qwen-1.5b --new-tokens 2048     # held-out answers, 8 questions at batch 8
    python -m bench demo --model qwen-1.5b                       # load, prepare, 60 steps, evaluate 8 rows
    python -m bench train --model embedded --steps 6 --warmup 2      # CPU: hf vs ours
    python -m bench curve --model qwen-1.5b --steps 30 --seeds 2     # same loss curve on real text?
    python -m bench learn --out docs/bench-results/learn-embedded-cpu.json  # does the demo teach? (bench/learn.py)

Each variant runs in its own process (Unsloth patches transformers for the whole process; `hf`
runs with FINETUNE_NO_UNSLOTH=1). One JSON object per variant goes to --out, and a table is
printed last. Ratios are against `unsloth-best` where it ran (else `unsloth`), with `unsloth` as a second
column: a lead over the seeds' batch shape alone is one any Unsloth user can take too.
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

VARIANTS = ("hf", "unsloth", "unsloth-best", "ours")
UNSLOTH_VARIANTS = ("unsloth", "unsloth-best")
ANCHORS = ("unsloth-best", "unsloth")
"""What ratios are measured against, the first that ran; a second column against the next."""
DEFAULT_NEW_TOKENS = {"chat": 256, "eval": 2048, "demo": 2048}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("bench", choices=["train", "chat", "eval", "demo", "curve", "learn", "one"])
    parser.add_argument("--model", choices=list(MODELS), default="embedded")
    parser.add_argument("--variants", default=None,
                        help="comma-separated; default hf,unsloth,unsloth-best,ours (CPU: hf,ours)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput")
    parser.add_argument("--max-length", type=int, default=None, help="default 2048 (CPU: 512)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="chat: tokens of the reply (256); eval, demo: of each answer (2048)")
    parser.add_argument("--rows", type=int, default=8, help="eval: questions answered (real medical-o1 rows)")
    parser.add_argument("--batch", type=int, default=8, help="eval: questions answered together")
    parser.add_argument("--seeds", type=int, default=2, help="curve: runs per variant (row orders)")
    parser.add_argument("--out", default=None, help="write the results as a JSON list here")
    parser.add_argument("--log-dir", default=None, help="keep each variant's output (stderr included) here")
    learn = parser.add_argument_group("learn (the default demo, base vs fine-tuned on real medical-o1 rows)")
    learn.add_argument("--recipe", default=None, help="default recipes/embedded-cpu-demo.yaml")
    learn.add_argument("--eval-file", default=None, help="default ../shared/data/medical_o1_sample.jsonl")
    learn.add_argument("--eval-rows", type=int, default=None, help="the first N real rows (default all)")
    learn.add_argument("--generate-rows", type=int, default=GENERATE_ROWS,
                       help=f"of these, the first N answered (default {GENERATE_ROWS})")
    learn.add_argument("--train-steps", type=int, default=None, help="default: the recipe's (demo: 60)")
    learn.add_argument("--eval-new-tokens", type=int, default=None, help="default: the device's evaluation default")
    parser.add_argument("--what", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.new_tokens is None:
        args.new_tokens = DEFAULT_NEW_TOKENS.get(args.what if args.bench == "one" else args.bench, 256)
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
    if args.bench == "eval":
        from bench.answers import agreement  # imports torch: only here

        same = agreement(results)
        for r in results:
            if r["variant"] in same:
                r["agreement"] = same[r["variant"]]
            for side in r.get("sides", {}).values():
                side["texts"] = [text[:120] for text in side["texts"]]  # the JSON keeps the openings
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
        variants = [v for v in variants if v not in UNSLOTH_VARIANTS]  # Unsloth needs a CUDA GPU
    return variants


def measure_one(args) -> dict:
    import_unsloth_first()
    from bench.measure import device, run_chat, run_curve, run_train  # after Unsloth: it patches transformers

    max_length = args.max_length or (2048 if device() == "cuda" else 512)
    if args.what == "eval":
        from bench.answers import run_answers
        from bench.measure import load

        loaded = load(args.variant, args.model, max(max_length, args.new_tokens + 1024))
        return run_answers(loaded, args.variant, args.model, args.new_tokens, args.rows, args.batch)
    if args.what == "demo":
        from bench.demo import run_demo

        return run_demo(args.variant, args.model, args.train_steps or 60, args.new_tokens)
    if args.what == "train":
        return run_train(args.variant, args.model, args.steps, args.warmup, max_length)
    if args.what == "curve":
        return run_curve(args.variant, args.model, args.steps, args.seed, max_length)
    return run_chat(args.variant, args.model, args.new_tokens)


def run_variant(args, variant: str, seed: int = 0) -> dict:
    command = [sys.executable, "-m", "bench", "one", "--what", args.bench, "--variant", variant,
               "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--new-tokens", str(args.new_tokens), "--seed", str(seed), "--rows", str(args.rows),
               "--batch", str(args.batch)]
    if args.train_steps:
        command += ["--train-steps", str(args.train_steps)]
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
    """A Markdown table of the results, with each variant's speed against the anchors (`ANCHORS`)."""
    if not results:
        return "no results"
    bench = results[0]["bench"]
    if bench == "curve":
        return curve_table(results)
    key = {"train": "tokens_per_s", "chat": "decode_tokens_per_s", "eval": "tokens_per_s", "demo": "wall_s"}[bench]
    faster = (lambda value, anchor: anchor / value) if bench == "demo" else (lambda value, anchor: value / anchor)
    anchors = [(name, r[key]) for name in ANCHORS for r in results if r["variant"] == name and key in r][:2]
    if not anchors:  # no Unsloth (a CPU): against the first variant
        anchors = [(r["variant"], r[key]) for r in results if key in r][:1]
    columns, cells = COLUMNS[bench]
    ratio_heads = "".join(f" vs {name} |" for name, _ in anchors)
    head = "| variant | " + " | ".join(columns) + " |" + ratio_heads
    lines = [f"{results[0]['model']} on {results[0].get('device', '?')}", "", head,
             "|---" * (len(columns) + 1 + len(anchors)) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |")
            continue
        ratios = "".join(f" {faster(r[key], value):.2f}x |" for _, value in anchors)
        lines.append(f"| {r['variant']} | " + " | ".join(cells(r)) + " |" + ratios)
    return "\n".join(lines)


def _batch(r: dict) -> str:
    recipe = r["recipe"]
    return f"{recipe['micro_batch_size']} x {recipe['grad_accum_steps']} {recipe['sampling']}"


COLUMNS = {
    "train": (["backend", "batch", "tokens/s", "s/step", "peak GB", "load s"],
              lambda r: [r["backend"], _batch(r), f"{r['tokens_per_s']:,.0f}", str(r["s_per_step"]),
                         str(r["peak_memory_gb"]), str(r["load_s"])]),
    "chat": (["decoder", "first token s", "decode tokens/s", "peak GB"],
             lambda r: [r.get("decoder", r["backend"]), str(r["first_token_s"]), str(r["decode_tokens_per_s"]),
                        str(r["peak_memory_gb"])]),
    "eval": (["decoder", "tokens/s", "s (base + fine-tuned)", "peak GB", "same answers as the first"],
             lambda r: [r["sides"]["base"]["decoder"], f"{r['tokens_per_s']:,.0f}", str(r["seconds"]),
                        str(r["peak_memory_gb"]),
                        "{same_answers}/{answers}, {mean_common_prefix:.0%} common start".format(**r["agreement"])
                        if "agreement" in r else "-"]),
    "demo": (["batch", "wall s", "load", "prepare", "train", "evaluate", "peak GB"],
             lambda r: [_batch(r), str(r["wall_s"]), *(str(r["phases_s"][p]) for p in
                                                        ("load", "prepare", "train", "evaluate")),
                        str(r["peak_memory_gb"])]),
}
"""Per bench: the column headers after the variant, and a row's cells."""


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
