"""Rollout speed: the project's decoder (generate.generate) against Hugging Face transformers' `generate`, side by side.

  1. One guide of the default configuration (256-d, 4 layers, 4 heads, 2 KV heads, vocab 2,048) is written as a
     Hugging Face directory (hf.save_hf) and read back by transformers' LlamaForCausalLM: both decoders run the
     same weights.
  2. Both sample --new-tokens tokens after --batch prompts of --prompt-tokens random tokens, at temperature 1 with no
     top-k / top-p (transformers' default top_k=50 is switched off) and no EOS, so every row decodes every token.
  3. They alternate for --rounds rounds after a warm-up each; the best time of each is kept (the least disturbed by
     whatever else runs on the machine), and the script prints one JSON line with tokens/s and the ratio.
  4. On a GPU it also prints the memory bandwidth our decode achieves, counting what each decode step must read at
     least (the weights as stored, and the KV cache written so far), against the device's peak from its memory clock
     and bus width.
transformers is a test dependency (requirements-dev.txt); without it the script says so and exits 1.

  python benchmarks/decode_speed.py                      # CPU, one thread: the README's figure
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
    prompts = torch.randint(3, cfg.vocab_size, (a.batch, a.prompt_tokens))
    sampling = generate.SamplingOptions(max_new_tokens=a.new_tokens, eos_id=-1, temperature=1.0)

    def run_ours():
        generate.generate(ours, prompts.tolist(), sampling, generator=torch.Generator(device).manual_seed(0),
                          compile_step=a.compile)

    def run_theirs():
        with torch.no_grad():
            out = theirs.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device),
                                  do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.new_tokens,
                                  min_new_tokens=a.new_tokens, eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == a.prompt_tokens + a.new_tokens

    for fn in (run_ours, run_theirs):     # warm-up: allocations, and compilation with --compile
        timed(fn, device)
    best = {"ours": float("inf"), "transformers": float("inf")}
    for _ in range(a.rounds):
        best["ours"] = min(best["ours"], timed(run_ours, device))
        best["transformers"] = min(best["transformers"], timed(run_theirs, device))
    tokens = a.batch * a.new_tokens
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    summary = {"device": name, "compile": a.compile, "batch": a.batch, "prompt_tokens": a.prompt_tokens,
               "new_tokens": a.new_tokens, "rounds": a.rounds, "transformers": transformers.__version__,
               "ours_tokens_per_s": round(tokens / best["ours"], 1),
               "transformers_tokens_per_s": round(tokens / best["transformers"], 1),
               "ratio": round(best["transformers"] / best["ours"], 2)}
    if device.type == "cuda":
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        cache_len = a.prompt_tokens + a.new_tokens / 2          # slots read by the average decode step
        kv_bytes = 2 * cfg.n_layer * a.batch * cfg.n_kv_head * cache_len * cfg.head_dim * 2        # bf16 keys, values
        summary["achieved_gb_per_s"] = round((weight_bytes + kv_bytes) * a.new_tokens / best["ours"] / 1e9, 1)
        props = torch.cuda.get_device_properties(device)
        clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
        summary["device_peak_gb_per_s"] = (round(2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, 1)
                                           if clock_khz and bus_bits else None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
