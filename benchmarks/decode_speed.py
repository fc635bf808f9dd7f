"""Rollout speed: the project's decoder (generate.generate) against Hugging Face transformers' `generate`, side by side.

  1. One guide of the default configuration (256-d, 4 layers, 4 heads, 2 KV heads, vocab 2,048) is written as a
     Hugging Face directory (hf.save_hf) and read back by transformers' LlamaForCausalLM: both decoders run the
     same weights.
  2. Both sample --new-tokens tokens for --batch rows after prompts of --prompt-tokens random tokens, at temperature
     1 with no top-k / top-p (transformers' default top_k=50 is switched off) and no EOS, so every row decodes every
     token. Two shapes: GRPO's rollouts, --group-size samples of each of batch / group-size prompts (ours:
     generate.generate_groups, which prefills each prompt once; transformers: generate with num_return_sequences,
     which copies the prompt before its prefill), and --batch distinct prompts (generate.generate; generate).
  3. They alternate for --rounds rounds after a warm-up each; the best time of each is kept (the least disturbed by
     whatever else runs on the machine), and the script prints one JSON line with tokens/s and the ratio of each
     shape ("ratio": GRPO's rollouts).
  4. On a GPU it also prints the memory bandwidth our decode achieves, counting what each decode step must read at
     least (the weights as stored, and the KV cache written so far), against the device's peak from its memory clock
     and bus width.
transformers is a test dependency (requirements-dev.txt); without it the script says so and exits 1.

  python benchmarks/decode_speed.py                      # CPU, one thread: docs/performance.md's figure
  python benchmarks/decode_speed.py --device cuda --compile
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import generate  # noqa: E402
import hf  # noqa: E402
import tokenizer as bpe  # noqa: E402
from model import Guide, GuideConfig  # noqa: E402


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=8, help="samples per prompt in GRPO's shape (grpo's default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="compile the project's decode step (generate's "
                                                           "compile_step) and transformers' forward")
    a = ap.parse_args()
    try:
        import transformers
    except ImportError:
        sys.exit("error: transformers is not installed: pip install -r requirements-dev.txt")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {a.device}: this torch sees no CUDA GPU")
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = GuideConfig()
    ours = Guide(cfg).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        bpe.save_tokenizer(bpe.train_tokenizer(["the quick brown fox jumps over the lazy dog"], 300), d + "/bpe")
        hf.save_hf(ours, bpe.load_tokenizer(d + "/bpe"), d)     # a tokenizer is part of the format; unused here
        theirs = transformers.LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).to(device).eval()
    if device.type == "cuda":     # both in bf16 on a GPU, as the recipe runs there
        theirs = theirs.to(torch.bfloat16)
    if a.compile:
        theirs.forward = torch.compile(theirs.forward)
    if a.group_size < 1 or a.batch % a.group_size:
        sys.exit(f"error: --batch {a.batch} must be a multiple of --group-size {a.group_size}")
    prompts = torch.randint(3, cfg.vocab_size, (a.batch, a.prompt_tokens))
    sampling = generate.SamplingOptions(max_new_tokens=a.new_tokens, eos_id=-1, temperature=1.0)
    generator = lambda: torch.Generator(device).manual_seed(0)

    def run_theirs(rows, copies):
        with torch.no_grad():
            out = theirs.generate(rows.to(device), attention_mask=torch.ones_like(rows).to(device),
                                  do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.new_tokens,
                                  min_new_tokens=a.new_tokens, eos_token_id=None, pad_token_id=0,
                                  num_return_sequences=copies)
        assert out.shape == (a.batch, a.prompt_tokens + a.new_tokens)

    group_prompts = prompts[:a.batch // a.group_size]
    shapes = {   # name: (ours, theirs)
        "grouped": (lambda: generate.generate_groups(ours, group_prompts.tolist(), a.group_size, sampling,
                                                     generator=generator(), compile_step=a.compile),
                    lambda: run_theirs(group_prompts, a.group_size)),
        "distinct": (lambda: generate.generate(ours, prompts.tolist(), sampling, generator=generator(),
                                               compile_step=a.compile),
                     lambda: run_theirs(prompts, 1)),
    }
    fns = {f"{shape}_{who}": fn for shape, pair in shapes.items() for who, fn in zip(("ours", "transformers"), pair)}
    for fn in fns.values():               # warm-up: allocations, and compilation with --compile
        timed(fn, device)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(a.rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, device))
    tokens = a.batch * a.new_tokens
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    summary = {"device": name, "compile": a.compile, "batch": a.batch, "group_size": a.group_size,
               "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "rounds": a.rounds,
               "transformers": transformers.__version__}
    summary.update({f"{k}_tokens_per_s": round(tokens / t, 1) for k, t in best.items()})
    summary["ratio"] = round(best["grouped_transformers"] / best["grouped_ours"], 2)
    summary["ratio_distinct_prompts"] = round(best["distinct_transformers"] / best["distinct_ours"], 2)
    if device.type == "cuda":
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        cache_len = a.prompt_tokens + a.new_tokens / 2          # slots read by the average decode step
        kv_bytes = 2 * cfg.n_layer * a.batch * cfg.n_kv_head * cache_len * cfg.head_dim * 2        # bf16 keys, values
        summary["achieved_gb_per_s"] = round((weight_bytes + kv_bytes) * a.new_tokens / best["distinct_ours"] / 1e9, 1)
        props = torch.cuda.get_device_properties(device)
        clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
        summary["device_peak_gb_per_s"] = (round(2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, 1)
                                           if clock_khz and bus_bits else None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
