"""Rollouts of the guide: sampling, the batched KV-cache decoder, a slow reference decoder, and log-probs for GRPO.

1. SamplingOptions says what to sample (temperature, top-k, top-p) and when a row ends (max_new_tokens, eos_id, stop
   strings); every decoder takes one.
2. generate: prompts of different lengths are left-padded into one batch and decoded with a preallocated KV cache;
   padded key slots are masked out and each row's RoPE positions start at 0, so every row computes what it would
   alone. It returns the sampled tokens, their log-probs (log_softmax(logits / temperature), taken before
   top-k / top-p, as the GRPO loss recomputes them with completion_logprobs) and the completion mask (EOS included).
   generate_groups samples G rows of each of N prompts (GRPO's groups): each distinct prompt is prefilled once and
   its cache copied to its G rows, then all N * G rows decode as one batch; group j may draw from its own
   generator, so its samples do not depend on which other groups share the batch.
3. reference_generate: the textbook loop (each row alone, full forward every step, no cache, no padding); the tests
   check that generate gives the same tokens, and `python generate.py --bench` measures how much faster generate is.
On CUDA, generation runs under bf16 autocast and can compile its decode step (static shapes); the CPU path uses
neither.
"""
import argparse
import json
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import Guide, GuideConfig, KVCache, autocast


@dataclass(frozen=True)
class SamplingOptions:
    """What to sample and when a row ends; one value for the whole batch."""
    max_new_tokens: int
    eos_id: int                    # the token that ends a row; -1 matches none, so every row runs max_new_tokens
    temperature: float = 1.0       # 0: greedy
    top_k: int | None = None       # sample among the k most likely tokens only
    top_p: float | None = None     # nucleus: among the fewest tokens that hold top_p of the mass
    stop_strings: tuple = ()       # a row also ends after the token that completes any of them (needs a tokenizer)

    def __post_init__(self):
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings or ()))   # a list reads as well
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingOptions: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if (self.temperature < 0 or (self.top_k is not None and self.top_k < 1)
                or (self.top_p is not None and not 0 < self.top_p <= 1)):
            raise ValueError(f"SamplingOptions: need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got "
                             f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}")


@dataclass
class Rollout:
    tokens: torch.Tensor      # (B, T) long: completion tokens, eos_id after a row has ended
    logprobs: torch.Tensor    # (B, T) float: log p(token) under logits / temperature, 0.0 after a row has ended
    mask: torch.Tensor        # (B, T) bool: True on the row's real completion tokens, its EOS included
    texts: list | None        # decoded completions (EOS left out) when a tokenizer was given


def _float(logits):
    return logits.to(torch.promote_types(logits.dtype, torch.float32))   # bf16 -> fp32; fp64 stays fp64


def _sample(logits, sampling, generator):
    """Next tokens (B,) and their log-probs (B,) for logits (B, V).

    The log-prob is taken from log_softmax(logits / temperature) before top-k / top-p cut the distribution,
    because that is the policy the GRPO loss recomputes; temperature 0 is greedy and scores with temperature 1.
    """
    temperature, top_k, top_p = sampling.temperature, sampling.top_k, sampling.top_p
    logits = _float(logits)
    if temperature == 0:
        tok = logits.argmax(dim=-1)
        return tok, F.log_softmax(logits, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
    logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)                                                 # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]                           # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p      # tokens whose predecessors already hold top_p of the mass
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    # Inverse-CDF sampling: one uniform number per row (torch.multinomial draws one per vocabulary entry, several
    # times slower here). u < cdf[:, -1] whatever the rounding, and right=True lands on a token of positive mass.
    cdf = F.softmax(logits, dim=-1).double().cumsum(dim=-1)                              # (B, V)
    u = _uniforms(cdf.shape[0], generator, cdf.dtype, cdf.device) * cdf[:, -1:]          # (B, 1)
    tok = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _uniforms(B, generator, dtype, device):
    """(B, 1) uniform numbers: from one generator, or from a list of generators that own equal consecutive blocks
    of rows (one per GRPO group)."""
    if not isinstance(generator, (list, tuple)):
        return torch.rand((B, 1), generator=generator, dtype=dtype, device=device)
    rows = B // len(generator)
    return torch.cat([torch.rand((rows, 1), generator=g, dtype=dtype, device=device) for g in generator])


def _check_request(model, prompts, sampling, tokenizer):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: need at least one prompt and every prompt needs at least one token")
    longest = max(len(p) for p in prompts) + sampling.max_new_tokens
    if longest > model.config.max_seq_len:
        raise ValueError(f"generate: longest prompt + max_new_tokens = {longest} exceeds max_seq_len "
                         f"{model.config.max_seq_len}")
    if sampling.stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need a tokenizer to decode the completions")


def _decode_loop(first_logits, next_logits, sampling, generator, tokenizer):
    """Sample until every row has ended (EOS or a stop string) or max_new_tokens; shared by both decoders.

    next_logits(completion (B, t)) -> logits (B, V) for the token after the completion so far.
    """
    max_new_tokens, eos_id = sampling.max_new_tokens, sampling.eos_id
    # A pretrained model's embedding may have more rows than its tokenizer has tokens: sample among the tokenizer's
    n_vocab = tokenizer.n_vocab if tokenizer is not None else None
    B, device = first_logits.shape[0], first_logits.device
    tokens = torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, max_new_tokens), dtype=_float(first_logits).dtype, device=device)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stops = [s.encode("utf-8") for s in sampling.stop_strings]
    longest_stop = max((len(s) for s in stops), default=0)   # every token is >= 1 byte: tails this long suffice
    rows = [[] for _ in range(B)]                            # completions as lists, for the stop-string check
    logits, steps = first_logits, 0
    for t in range(max_new_tokens):
        tok, lp = _sample(logits[:, :n_vocab], sampling, generator)                      # (B,), (B,)
        tok = tok.masked_fill(done, eos_id)
        tokens[:, t], logprobs[:, t], mask[:, t] = tok, lp.masked_fill(done, 0.0), ~done
        done = done | (tok == eos_id)
        if stops:
            # The row ends right after the token that completes a stop string; only the tail can hold a new one.
            hit = []
            for row, tid, ended in zip(rows, tok.tolist(), done.tolist()):
                row.append(tid)
                hit.append(not ended and any(s in tokenizer.decode_bytes(row[-longest_stop:]) for s in stops))
            done = done | torch.tensor(hit, device=device)
        steps = t + 1
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        logits = next_logits(tokens[:, :t + 1])
    tokens, logprobs, mask = tokens[:, :steps], logprobs[:, :steps], mask[:, :steps]
    texts = None
    if tokenizer is not None:
        texts = []
        for row, n in zip(tokens.tolist(), mask.sum(dim=1).tolist()):
            row = row[:n]
            texts.append(tokenizer.decode(row[:-1] if row and row[-1] == eos_id else row))
    return Rollout(tokens, logprobs, mask, texts)


def _prefill(model, prompts, max_new_tokens, compile_step):
    """Left-pad the prompts into one batch, fill a fresh cache with them; returns (cache, last logits, left_pad).

    The cache holds the longest prompt + max_new_tokens slots; for a compiled step it always holds max_seq_len,
    so prompts of any length reuse the same compiled graph.
    """
    device = model.tok_emb.weight.device
    P = max(len(p) for p in prompts)
    cache_len = model.config.max_seq_len if compile_step else P + max_new_tokens
    left_pad = torch.tensor([P - len(p) for p in prompts], device=device)                # (B,)
    idx = torch.tensor([[0] * (P - len(p)) + list(p) for p in prompts], device=device)   # (B, P)
    dtype = torch.bfloat16 if device.type == "cuda" else model.tok_emb.weight.dtype     # what autocast makes
    cache = KVCache.empty(model.config, len(prompts), cache_len, device, dtype)
    with autocast(device):
        logits = model(idx, kv_cache=cache, start_pos=0, left_pad=left_pad, last_only=True)[:, -1]   # (B, V)
    return cache, logits, left_pad


def _cached_step(model, cache, left_pad, P, compile_step):
    """next_logits for _decode_loop over a cache that _prefill filled with prompts of P slots (left_pad included):
    each step feeds the last token of every row and writes its keys and values into the cache."""
    device = left_pad.device
    # Every decode step has the same shapes (B, 1) -> (B, V) over the same cache, so one compiled graph serves all.
    step = torch.compile(model, dynamic=False) if compile_step else model

    def next_logits(completion):                                                          # (B, t) -> (B, V)
        pos = P + completion.shape[1] - 1                 # eager: attend over the slots written so far only
        if compile_step:
            pos = torch.tensor(pos, device=device)
        with autocast(device):
            return step(completion[:, -1:], kv_cache=cache, start_pos=pos, left_pad=left_pad)[:, -1]

    return next_logits


@torch.no_grad()
def generate(model, prompts, sampling: SamplingOptions, *, generator=None, tokenizer=None,
             compile_step=False) -> Rollout:
    """Sample completions for a batch of token-list prompts of any lengths (module docstring, point 2).

    generator: a torch.Generator on the model's device, for reproducible samples. tokenizer: decodes the completions
    into Rollout.texts, and is needed for sampling.stop_strings. compile_step (CUDA): torch.compile the decode step.
    """
    _check_request(model, prompts, sampling, tokenizer)
    cache, logits, left_pad = _prefill(model, prompts, sampling.max_new_tokens, compile_step)
    next_logits = _cached_step(model, cache, left_pad, max(len(p) for p in prompts), compile_step)
    return _decode_loop(logits, next_logits, sampling, generator, tokenizer)


@torch.no_grad()
def generate_groups(model, prompts, group_size, sampling: SamplingOptions, *, generator=None, tokenizer=None,
                    compile_step=False) -> Rollout:
    """group_size samples of each prompt, as rows prompt 0 x G, prompt 1 x G, ...: the prompts are prefilled once
    each and their caches copied to their rows. generator: one for all rows, or a list of one per prompt (group j
    draws from generator[j] alone, as it would decoded by itself)."""
    _check_request(model, prompts, sampling, tokenizer)
    if isinstance(generator, (list, tuple)) and len(generator) != len(prompts):
        raise ValueError(f"generate_groups: {len(generator)} generators for {len(prompts)} prompts")
    cache, logits, left_pad = _prefill(model, prompts, sampling.max_new_tokens, compile_step)
    next_logits = _cached_step(model, cache.repeat(group_size), left_pad.repeat_interleave(group_size),
                               max(len(p) for p in prompts), compile_step)
    return _decode_loop(logits.repeat_interleave(group_size, dim=0), next_logits, sampling, generator, tokenizer)


@torch.no_grad()
def reference_generate(model, prompts, sampling: SamplingOptions, *, generator=None, tokenizer=None) -> Rollout:
    """The slow textbook decode: every step runs each row alone over its whole prompt + completion, no cache."""
    _check_request(model, prompts, sampling, tokenizer)
    device = model.tok_emb.weight.device
    rows = [torch.tensor(p, device=device) for p in prompts]

    def next_logits(completion):                                                          # (B, t) -> (B, V)
        with autocast(device):
            return torch.stack([model(torch.cat([prompt, so_far])[None])[0, -1]
                                for prompt, so_far in zip(rows, completion)])

    first = next_logits(torch.zeros((len(prompts), 0), dtype=torch.long, device=device))
    return _decode_loop(first, next_logits, sampling, generator, tokenizer)


def completion_logprobs(model, prompts, completions, temperature=1.0, n_vocab=None):
    """log p(completion token | prompt, earlier completion tokens) under logits / temperature: (B, T), with grad.
    n_vocab: the policy covers the first n_vocab tokens only, as generate samples them with a tokenizer that has
    fewer tokens than the model has rows.

    One batched forward over the left-padded prompts followed by the completions (B, T). Positions after a row's
    end hold whatever follows (padding) and get values too; callers mask them. Temperature 0 scores with 1, as
    generate does.
    """
    device = next(model.parameters()).device                # model may be in DistributedDataParallel
    completions = completions.to(device)
    if len(prompts) != completions.shape[0]:
        raise ValueError(f"completion_logprobs: {len(prompts)} prompts but {completions.shape[0]} completions")
    P = max(len(p) for p in prompts)
    left_pad = torch.tensor([P - len(p) for p in prompts], device=device)                # (B,)
    idx = torch.tensor([[0] * (P - len(p)) + list(p) for p in prompts], device=device)   # (B, P)
    with autocast(device):
        logits = model(torch.cat([idx, completions], dim=1), left_pad=left_pad)           # (B, P + T, V)
    logits = _float(logits[:, P - 1:-1, :n_vocab]) / (temperature or 1.0)                # (B, T, V)
    return -F.cross_entropy(logits.flatten(0, 1), completions.flatten(), reduction="none").view(completions.shape)


# -------------------------------------------------------------------------------------------------------- bench


def bench(device="cpu", compile_step=False, naive_rows=None, batch=64, prompt_len=64, new_tokens=64):
    """Tokens per second of generate and of reference_generate on the default config; one JSON line.

    eos_id -1 matches no token, so every row decodes all new_tokens in both decoders. reference_generate runs each
    row on its own, so its rate hardly depends on how many rows it is given: naive_rows (default: all) may be fewer.
    """
    naive_rows = naive_rows or batch
    torch.manual_seed(0)
    device = torch.device(device)
    model = Guide(GuideConfig()).to(device).eval()
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len)).tolist()
    sampling = SamplingOptions(max_new_tokens=new_tokens, eos_id=-1, temperature=1.0)

    def timed(fn, rows):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(model, rows, sampling, generator=torch.Generator(device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    gen = lambda m, p, s, **kw: generate(m, p, s, compile_step=compile_step, **kw)
    timed(gen, prompts)                                    # warm-up (and compilation, with compile_step)
    kv_rate = batch * new_tokens / timed(gen, prompts)
    naive_rate = naive_rows * new_tokens / timed(reference_generate, prompts[:naive_rows])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return {"device": name,
            "compile_step": compile_step, "batch": batch, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "naive_rows_timed": naive_rows, "kv_tokens_per_s": round(kv_rate, 1),
            "naive_tokens_per_s": round(naive_rate, 1), "speedup": round(kv_rate / naive_rate, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Guide rollouts. --bench: throughput, KV cache vs naive.")
    parser.add_argument("--bench", action="store_true", help="print one JSON line of generation throughput")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    parser.add_argument("--naive-rows", type=int, default=None, help="rows timed for reference_generate (default all)")
    cli = parser.parse_args()
    if not cli.bench:
        parser.error("nothing to do: pass --bench")
    if cli.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {cli.device}: no CUDA device on this machine")
    print(json.dumps(bench(cli.device, cli.compile, cli.naive_rows)), flush=True)
