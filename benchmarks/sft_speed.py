"""SFT training-step speed on this machine: random or length-grouped batches, eager fp32, torch.compile, bf16 autocast.

Each variant trains the default SFT guide from the same initial weights on a run's accepted strategies and reports
tokens/s (padded tokens through forward + backward), useful tokens/s (padding excluded: what the training actually
reads) and the mean loss of its last 50 steps, so "faster at equal loss" can be read off one JSON line per variant.
Variants: random (the batches of the earlier recipe), grouped (sft.sft_batch_examples), grouped+compile (the
sft stage's default), grouped+bf16.

    python benchmarks/sft_speed.py --run runs/default [--steps 150] [--threads 1]
"""
import argparse
import json
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as guide_model  # noqa: E402
import run_dir  # noqa: E402
import sft  # noqa: E402
import training  # noqa: E402


def measure(run, variant, steps, threads, warmup=10):
    torch.set_num_threads(threads)
    cfg = sft.SFTConfig()
    tok = run_dir.load_tokenizer(run)
    examples = sft.sft_examples(run, tok, "accepted", run_dir.load_tasks(run, "train"), cfg.max_seq_len)[0]
    pad = tok.encode_single_token("<|pad|>")
    torch.manual_seed(0)
    net = guide_model.Guide(guide_model.GuideConfig(vocab_size=tok.n_vocab, n_layer=cfg.n_layer, n_embd=cfg.n_embd,
                                                    n_head=cfg.n_head, n_kv_head=cfg.n_kv_head,
                                                    max_seq_len=cfg.max_seq_len))
    optimizer = training.make_optimizer(net, cfg.lr, cfg.weight_decay)

    def step(inputs, targets, mask):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in variant):
            logits = net(inputs)                                                    # (B, T, V)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        loss = (ce * mask.flatten().float()).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    if "compile" in variant:
        step = torch.compile(step, dynamic=True)
    losses, tokens, useful, t0 = [], 0, 0, None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        if variant == "random":
            batch = random.Random(i).sample(examples, cfg.batch_size)
        else:
            batch = sft.sft_batch_examples(examples, cfg, i)
        inputs, targets, mask = sft.sft_batch(batch, pad)
        loss = step(inputs, targets, mask)
        if i >= warmup:
            tokens += inputs.numel()
            useful += sum(len(p) + len(c) - 1 for p, c in batch)
            losses.append(loss.item())
    seconds = time.perf_counter() - t0
    return dict(variant=variant, threads=threads, steps=steps, tokens_per_s=round(tokens / seconds),
                useful_tokens_per_s=round(useful / seconds), steps_per_s=round(steps / seconds, 2),
                mean_loss_last_50=round(sum(losses[-50:]) / 50, 4))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/default", help="a run directory with tokenizer and accepted.jsonl")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1, help="1: as train.sh runs the two SFT stages")
    parser.add_argument("--variants", default="random,grouped,grouped+compile,grouped+bf16")
    args = parser.parse_args()
    if args.steps < 50:
        parser.error("--steps must be >= 50 (the loss is averaged over the last 50)")
    run = run_dir.Run(args.run)
    for variant in args.variants.split(","):
        print(json.dumps(dict(measure(run, variant, args.steps, args.threads))), flush=True)


if __name__ == "__main__":
    main()
