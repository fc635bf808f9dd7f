"""The guide: a small Llama-style decoder, its tokenizer, fast batched rollouts and checkpoints.

1. GuideConfig / Guide: RMSNorm, rotary positions (RoPE), SwiGLU MLP and grouped-query attention through
   F.scaled_dot_product_attention; a tiny default (about 3.5M parameters) that trains in minutes on a 2-core CPU.
2. Tokenizer: a byte-level BPE trained here (count regex-split words, merge the most frequent pair again and again),
   saved in tiktoken's rank-file format and loaded as a tiktoken.Encoding with <|bos|>, <|eos|>, <|pad|> appended.
   All 256 bytes are tokens, so any Unicode text round-trips.
3. generate: prompts of different lengths are left-padded into one batch and decoded with a preallocated KV cache;
   padded key slots are masked out and each row's RoPE positions start at 0, so every row computes what it would
   alone. It returns the sampled tokens, their log-probs (log_softmax(logits / temperature), taken before
   top-k / top-p, as the GRPO loss recomputes them with completion_logprobs) and the completion mask (EOS included).
   generate_group prefills one prompt once and copies its cache to G rows (one GRPO group).
4. reference_generate: the textbook loop (each row alone, full forward every step, no cache, no padding); the tests
   check that generate gives the same tokens, and `python model.py --bench` measures how much faster generate is.
5. Checkpoints: a directory with model.safetensors and config.json; load_checkpoint raises CheckpointError naming
   the file and the problem. A training checkpoint (save_training / resume_training) adds the optimizer, the RNG
   states and the trainer's state, and is one directory written under a temporary name and renamed into place, so
   a run killed at any moment resumes from a complete one. Every file is written by atomic_write.
6. load_hf / save_hf: pretrained Hugging Face guides in and out (Llama, Qwen2, Mistral; tokenizer.json as a
   tiktoken.Encoding). They live in hf.py, because reading and writing that format takes longer than the model
   itself, and are re-exported here so `model.load_hf(dir)` works.
On CUDA, generation runs under bf16 autocast and can compile its decode step (static shapes); the CPU path uses
neither.
"""
import argparse
import base64
import heapq
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save

# ----------------------------------------------------------------------------------------------------- the model


@dataclass
class GuideConfig:
    vocab_size: int = 2048        # includes the three special tokens: a tokenizer trained for 2048 fills it exactly
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2            # grouped-query attention: each key/value head serves n_head // n_kv_head queries
    n_embd: int = 256
    ffn_hidden: int | None = None  # SwiGLU width; None: about 8/3 * n_embd, rounded up to a multiple of 64
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    tie_embeddings: bool = True   # the output layer reuses the token embedding (saves vocab_size * n_embd weights)
    qkv_bias: bool = False
    norm_eps: float = 1e-5        # RMSNorm epsilon (pretrained models use 1e-5 or 1e-6)
    head_dim: int | None = None   # None: n_embd // n_head; some pretrained models set it apart from n_embd
    rope_scaling: dict | None = None  # Llama 3.1's rule: {factor, low_freq_factor, high_freq_factor,
                                      # original_max_position_embeddings}; None: plain RoPE

    def __post_init__(self):
        # a config file is input: sizes are checked before any tensor is made from them
        for name, most in (("vocab_size", 1 << 21), ("n_layer", 1024), ("n_head", 1024), ("n_kv_head", 1024),
                           ("n_embd", 1 << 16), ("max_seq_len", 1 << 20)):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= most:
                raise ValueError(f"GuideConfig: {name} must be an integer in [1, {most}], got {value!r}")
        for name in ("ffn_hidden", "head_dim"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 1 <= value <= 1 << 18):
                raise ValueError(f"GuideConfig: {name} must be a positive integer or null, got {value!r}")
        if self.ffn_hidden is None:
            self.ffn_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64)
        if self.head_dim is None:
            self.head_dim = self.n_embd // self.n_head if self.n_embd % self.n_head == 0 else 0
        if not self.head_dim or self.head_dim % 2 or self.n_head % self.n_kv_head:
            raise ValueError(f"GuideConfig: need n_embd % n_head == 0 (or a head_dim), n_head % n_kv_head == 0 and "
                             f"an even head size; got n_embd={self.n_embd}, n_head={self.n_head}, "
                             f"n_kv_head={self.n_kv_head}, head_dim={self.head_dim}")


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def apply_rope(x, cos, sin):
    """Rotate each (first half, second half) pair of x's channels by its position's angle. x: (B, h, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def rope_tables(cfg):
    """cos and sin of every position's angle for each channel pair: two (max_seq_len, head_dim / 2) tensors."""
    inv_freq = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    if cfg.rope_scaling:
        # Llama 3.1+ stretches the slow channels (wavelength beyond the original context / low_freq_factor) by
        # `factor`, keeps the fast ones (below original context / high_freq_factor), and blends in between.
        s = cfg.rope_scaling
        ramp = (s["original_max_position_embeddings"] * inv_freq / (2 * math.pi) - s["low_freq_factor"]) / (
            s["high_freq_factor"] - s["low_freq_factor"])
        inv_freq = inv_freq * (ramp.clamp(0, 1) + (1 - ramp.clamp(0, 1)) / s["factor"])
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv_freq)  # (max_seq_len, hd/2)
    return angles.cos().float(), angles.sin().float()


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, mask, cache, slots):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv_head * self.head_dim,
                                     self.n_kv_head * self.head_dim], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, self.head_dim).transpose(1, 2), cos, sin)      # (B, H, T, hd)
        k = apply_rope(k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2), cos, sin)   # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)                        # (B, Hkv, T, hd)
        if cache is not None:
            # Write this call's keys/values into their slots, then attend over the whole preallocated cache:
            # the shapes never change from one decode step to the next, and the mask hides unwritten slots.
            cache_k, cache_v = cache
            cache_k.index_copy_(2, slots, k.to(cache_k.dtype))
            cache_v.index_copy_(2, slots, v.to(cache_v.dtype))
            k, v = cache_k, cache_v                                                             # (B, Hkv, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=self.n_kv_head != self.n_head)            # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.n_embd, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.n_embd, cfg.norm_eps), MLP(cfg)

    def forward(self, x, cos, sin, mask, cache, slots):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, slots)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class KVCache:
    """Preallocated keys and values of every layer: k[i], v[i] are (B, n_kv_head, max_len, head_dim)."""
    k: list
    v: list

    @staticmethod
    def empty(cfg, batch, max_len, device, dtype):
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        return KVCache([torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
                       [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)])

    @property
    def max_len(self):
        return self.k[0].shape[2]

    def repeat(self, n):
        """A cache of n rows, each a copy of this one-row cache (a GRPO group shares its prompt's prefill)."""
        return KVCache([k.expand(n, -1, -1, -1).clone() for k in self.k],
                       [v.expand(n, -1, -1, -1).clone() for v in self.v])


class Guide(nn.Module):
    def __init__(self, cfg: GuideConfig):
        super().__init__()
        self.config = cfg
        self.grad_checkpointing = False   # set True to trade compute for activation memory in training
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        rope_cos, rope_sin = rope_tables(cfg)
        self.register_buffer("rope_cos", rope_cos, persistent=False)
        self.register_buffer("rope_sin", rope_sin, persistent=False)
        # Small init keeps early logits mild; the two projections that add into the residual stream are scaled
        # down further so the stream's variance does not grow with depth.
        residual_std = 0.02 / (2 * cfg.n_layer) ** 0.5
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual = name.endswith(("attn.proj.weight", "mlp.down.weight"))
                nn.init.normal_(p, mean=0.0, std=residual_std if residual else 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx, kv_cache=None, start_pos=0, left_pad=None):
        """Logits (B, T, V) for tokens idx (B, T) that sit in slots start_pos .. start_pos + T - 1 of each row.

        left_pad (B,) long: how many padding slots open each row; they are masked out as keys and the row's RoPE
        positions count from its first real token. With kv_cache the keys and values are written into the cache
        and attention covers all of it; start_pos may then be a 0-dim tensor so a compiled step sees fixed shapes.
        """
        B, T = idx.shape
        if isinstance(start_pos, int) and start_pos + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens is longer than max_seq_len "
                             f"{self.config.max_seq_len}")
        slots = start_pos + torch.arange(T, device=idx.device)                                   # (T,)
        pad = torch.zeros(B, dtype=torch.long, device=idx.device) if left_pad is None else left_pad
        positions = (slots[None, :] - pad[:, None]).clamp(min=0)                                  # (B, T)
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]           # (B, 1, T, hd/2)
        mask = None                                  # plain causal attention (training) needs no mask tensor
        if kv_cache is not None or left_pad is not None:
            keys = torch.arange(kv_cache.max_len if kv_cache is not None else T, device=idx.device)   # (L,)
            mask = (keys[None, None, :] <= slots[None, :, None]) & (keys[None, None, :] >= pad[:, None, None])
            # A padding slot attends to itself, so no query row is all -inf (which would give NaN).
            mask = (mask | (keys[None, None, :] == slots[None, :, None]))[:, None]                # (B, 1, T, L)
        x = self.tok_emb(idx)                                                                     # (B, T, C)
        for i, block in enumerate(self.blocks):
            cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # keep only each block's input; its activations are recomputed in the backward pass (a pretrained
                # guide's long sequences then fit in memory, for about a third more compute)
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, mask, cache, slots, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache, slots)
        return self.lm_head(self.norm(x))                                                         # (B, T, V)


# ------------------------------------------------------------------------------------------------ the tokenizer

# GPT-2 style pre-tokenization: contractions, letters with an optional leading space, up to three digits, other
# symbols, whitespace. Written in the syntax Python's `re` and tiktoken's regex engine both read; its branches cover
# every character (\w = letters | digits | "_", \W = whitespace | the rest), so no text is ever dropped.
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")   # ids len(ranks), len(ranks) + 1, len(ranks) + 2


def train_tokenizer(texts, vocab_size):
    """Byte-level BPE: the mergeable ranks (bytes -> id) of a vocabulary of vocab_size tokens, specials included.

    The 256 single bytes come first, then one token per merge, most frequent pair first. Pair counts are updated
    only for the words a merge touches, and a heap (with stale entries skipped) finds the next pair, so a 2k
    vocabulary on 1 MB of text takes seconds. Fewer ranks come back when the text runs out of pairs.
    """
    if isinstance(texts, str):
        texts = [texts]
    n_ranks = vocab_size - len(SPECIAL_TOKENS)
    if n_ranks < 256:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + specials), "
                         f"got {vocab_size}")
    pattern = re.compile(PAT_STR)
    word_counts = Counter()
    for text in texts:
        word_counts.update(pattern.findall(text))
    words = [list(w.encode("utf-8")) for w in word_counts]     # each word as a list of token ids
    freqs = list(word_counts.values())
    vocab = [bytes([b]) for b in range(256)]                    # id -> bytes
    ids = {t: i for i, t in enumerate(vocab)}                   # bytes -> id
    pair_counts = defaultdict(int)                              # (id, id) -> occurrences in the text
    pair_words = defaultdict(set)                               # (id, id) -> words that may contain it
    for i, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            pair_words[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < n_ranks and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:               # stale entry: the count changed since the push
            continue
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged not in ids:                                    # (two different pairs can spell the same bytes)
            ids[merged] = len(vocab)
            vocab.append(merged)
        new_id = ids[merged]
        touched = set()
        for i in pair_words.pop(pair):
            w, f = words[i], freqs[i]
            new_w, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == pair:
                    new_w.append(new_id)
                    j += 2
                else:
                    new_w.append(w[j])
                    j += 1
            if len(new_w) == len(w):
                continue
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                touched.add(p)
            for p in zip(new_w, new_w[1:]):
                pair_counts[p] += f
                pair_words[p].add(i)
                touched.add(p)
            words[i] = new_w
        del pair_counts[pair]
        for p in touched - {pair}:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    return {t: i for i, t in enumerate(vocab)}


def save_tokenizer(ranks, path):
    """tiktoken's rank-file format: one `base64(token) rank` line per token, written atomically."""
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    lines = "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in by_rank)
    atomic_write(path, lines)


def load_tokenizer(path):
    """The tiktoken.Encoding for a saved rank file, with <|bos|>, <|eos|>, <|pad|> after the mergeable ranks.

    Encode text with enc.encode_ordinary(text) (or enc.encode(text, disallowed_special=())), so a special token's
    spelling inside text stays plain text; add special ids yourself, e.g. enc.encode_single_token("<|eos|>").
    """
    try:
        with open(path, "rb") as f:
            raw = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read tokenizer file ({e.strerror})") from None
    ranks = {}
    for n, line in enumerate(raw, 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}: line {n} is not '<base64 token> <rank>'") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"{path}: ranks must be 0..n-1 without repeats and include all 256 single bytes")
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    name = os.path.splitext(os.path.basename(path))[0]
    return tiktoken.Encoding(name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)


# --------------------------------------------------------------------------------------------------- generation


@dataclass
class Rollout:
    tokens: torch.Tensor      # (B, T) long: completion tokens, eos_id after a row has ended
    logprobs: torch.Tensor    # (B, T) float: log p(token) under logits / temperature, 0.0 after a row has ended
    mask: torch.Tensor        # (B, T) bool: True on the row's real completion tokens, its EOS included
    texts: list | None        # decoded completions (EOS left out) when a tokenizer was given


def autocast(device):
    """bf16 autocast on CUDA, a no-op elsewhere: generation, scoring and the recipe's SFT all run under it."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _float(logits):
    return logits.to(torch.promote_types(logits.dtype, torch.float32))   # bf16 -> fp32; fp64 stays fp64


def _sample(logits, temperature, top_k, top_p, generator):
    """Next tokens (B,) and their log-probs (B,) for logits (B, V).

    The log-prob is taken from log_softmax(logits / temperature) before top-k / top-p cut the distribution,
    because that is the policy the GRPO loss recomputes; temperature 0 is greedy and scores with temperature 1.
    """
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
    tok = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _check_request(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_strings, tokenizer):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: need at least one prompt and every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest > model.config.max_seq_len:
        raise ValueError(f"generate: longest prompt + max_new_tokens = {longest} exceeds max_seq_len "
                         f"{model.config.max_seq_len}")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"generate: need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got "
                         f"temperature={temperature}, top_k={top_k}, top_p={top_p}")
    if stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need a tokenizer to decode the completions")


def _decode_loop(first_logits, next_logits, max_new_tokens, eos_id, temperature, top_k, top_p, generator,
                 stop_strings, tokenizer):
    """Sample until every row has ended (EOS or a stop string) or max_new_tokens; shared by both decoders.

    next_logits(completion (B, t)) -> logits (B, V) for the token after the completion so far.
    """
    B, device = first_logits.shape[0], first_logits.device
    tokens = torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, max_new_tokens), dtype=_float(first_logits).dtype, device=device)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stops = [s.encode("utf-8") for s in stop_strings or []]
    longest_stop = max((len(s) for s in stops), default=0)   # every token is >= 1 byte: tails this long suffice
    rows = [[] for _ in range(B)]                            # completions as lists, for the stop-string check
    logits, steps = first_logits, 0
    for t in range(max_new_tokens):
        tok, lp = _sample(logits, temperature, top_k, top_p, generator)                 # (B,), (B,)
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
        logits = model(idx, kv_cache=cache, start_pos=0, left_pad=left_pad)[:, -1]      # (B, V)
    return cache, logits, left_pad


def _decode_with_cache(model, cache, logits, left_pad, P, max_new_tokens, eos_id, temperature, top_k, top_p,
                       generator, stop_strings, tokenizer, compile_step):
    device = logits.device
    # Every decode step has the same shapes (B, 1) -> (B, V) over the same cache, so one compiled graph serves all.
    step = torch.compile(model, dynamic=False) if compile_step else model

    def next_logits(completion):                                                          # (B, t) -> (B, V)
        pos = torch.tensor(P + completion.shape[1] - 1, device=device)
        with autocast(device):
            return step(completion[:, -1:], kv_cache=cache, start_pos=pos, left_pad=left_pad)[:, -1]

    return _decode_loop(logits, next_logits, max_new_tokens, eos_id, temperature, top_k, top_p, generator,
                        stop_strings, tokenizer)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, eos_id, temperature=1.0, top_k=None, top_p=None, generator=None,
             stop_strings=None, tokenizer=None, compile_step=False) -> Rollout:
    """Sample completions for a batch of token-list prompts of any lengths (module docstring, point 3).

    generator: a torch.Generator on the model's device, for reproducible samples. stop_strings (with tokenizer):
    a row also ends after the token that completes any of them. compile_step (CUDA): torch.compile the decode step.
    """
    _check_request(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_strings, tokenizer)
    cache, logits, left_pad = _prefill(model, prompts, max_new_tokens, compile_step)
    return _decode_with_cache(model, cache, logits, left_pad, max(len(p) for p in prompts), max_new_tokens, eos_id,
                              temperature, top_k, top_p, generator, stop_strings, tokenizer, compile_step)


@torch.no_grad()
def generate_group(model, prompt, group_size, max_new_tokens, eos_id, temperature=1.0, top_k=None, top_p=None,
                   generator=None, stop_strings=None, tokenizer=None, compile_step=False) -> Rollout:
    """group_size samples of one prompt: the prompt is prefilled once and its cache copied to every row."""
    _check_request(model, [prompt], max_new_tokens, temperature, top_k, top_p, stop_strings, tokenizer)
    cache, logits, left_pad = _prefill(model, [prompt], max_new_tokens, compile_step)
    return _decode_with_cache(model, cache.repeat(group_size), logits.expand(group_size, -1),
                              left_pad.expand(group_size), len(prompt), max_new_tokens, eos_id, temperature, top_k,
                              top_p, generator, stop_strings, tokenizer, compile_step)


@torch.no_grad()
def reference_generate(model, prompts, max_new_tokens, eos_id, temperature=1.0, top_k=None, top_p=None,
                       generator=None, stop_strings=None, tokenizer=None) -> Rollout:
    """The slow textbook decode: every step runs each row alone over its whole prompt + completion, no cache."""
    _check_request(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_strings, tokenizer)
    device = model.tok_emb.weight.device
    rows = [torch.tensor(p, device=device) for p in prompts]

    def next_logits(completion):                                                          # (B, t) -> (B, V)
        with autocast(device):
            return torch.stack([model(torch.cat([prompt, so_far])[None])[0, -1]
                                for prompt, so_far in zip(rows, completion)])

    first = next_logits(torch.zeros((len(prompts), 0), dtype=torch.long, device=device))
    return _decode_loop(first, next_logits, max_new_tokens, eos_id, temperature, top_k, top_p, generator,
                        stop_strings, tokenizer)


def completion_logprobs(model, prompts, completions, temperature=1.0):
    """log p(completion token | prompt, earlier completion tokens) under logits / temperature: (B, T), with grad.

    One batched forward over the left-padded prompts followed by the completions (B, T). Positions after a row's
    end hold whatever follows (padding) and get values too; callers mask them. Temperature 0 scores with 1, as
    generate does.
    """
    device = model.tok_emb.weight.device
    completions = completions.to(device)
    if len(prompts) != completions.shape[0]:
        raise ValueError(f"completion_logprobs: {len(prompts)} prompts but {completions.shape[0]} completions")
    P = max(len(p) for p in prompts)
    left_pad = torch.tensor([P - len(p) for p in prompts], device=device)                # (B,)
    idx = torch.tensor([[0] * (P - len(p)) + list(p) for p in prompts], device=device)   # (B, P)
    with autocast(device):
        logits = model(torch.cat([idx, completions], dim=1), left_pad=left_pad)           # (B, P + T, V)
    logits = _float(logits[:, P - 1:-1]) / (temperature or 1.0)                           # (B, T, V)
    return -F.cross_entropy(logits.flatten(0, 1), completions.flatten(), reduction="none").view(completions.shape)


# -------------------------------------------------------------------------------------------------- checkpoints


class CheckpointError(Exception):
    """A checkpoint that is missing, torn or does not fit its config; the message names the file."""


def atomic_write(path, data: bytes | str):
    """Write data to path so that a reader, or a run killed at any moment, finds the old file or the new one whole:
    a temp file beside path, flushed to disk, then renamed over path in one step."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _weights(model):
    """The state dict to save: contiguous tensors, the tied output layer left out (it is the embedding)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(model, path_dir):
    """Write path_dir/model.safetensors and path_dir/config.json."""
    os.makedirs(path_dir, exist_ok=True)
    atomic_write(os.path.join(path_dir, "model.safetensors"), save(_weights(model), metadata={"format": "pt"}))
    atomic_write(os.path.join(path_dir, "config.json"), json.dumps(asdict(model.config), indent=2))


def load_checkpoint(path_dir, device="cpu") -> Guide:
    """The Guide saved in path_dir; raises CheckpointError naming the file and what is wrong with it."""
    config_path = os.path.join(path_dir, "config.json")
    weights_path = os.path.join(path_dir, "model.safetensors")
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (a checkpoint directory holds config.json and model.safetensors)")
    try:
        with open(config_path) as f:
            raw = json.load(f)
        known = {f.name for f in fields(GuideConfig)}
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else None
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        config = GuideConfig(**raw)
    except (ValueError, TypeError) as e:    # JSONDecodeError is a ValueError
        raise CheckpointError(f"{config_path}: not a valid GuideConfig ({e})") from None
    try:                                    # shapes from the file's header and the config, before allocating
        with safe_open(weights_path, "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        with torch.device("meta"):
            implied = {k: tuple(v.shape) for k, v in Guide(config).state_dict().items()
                       if not (config.tie_embeddings and k == "lm_head.weight")}
    except Exception as e:                  # safetensors raises its own error type for torn or corrupt files
        raise CheckpointError(f"{weights_path}: torn or corrupt safetensors file ({e})") from None
    if stored != implied:
        wrong = sorted(k for k in set(stored) | set(implied) if stored.get(k) != implied.get(k))
        raise CheckpointError(f"{weights_path}: does not match {config_path}: " + ", ".join(
            f"{k} {stored.get(k)} vs {implied.get(k)}" for k in wrong[:3]))
    try:
        weights = load_file(weights_path)
    except Exception as e:
        raise CheckpointError(f"{weights_path}: torn or corrupt safetensors file ({e})") from None
    model = Guide(config)
    if "tok_emb.weight" in weights:                  # keep the stored precision (fp32, bf16, fp64)
        model.to(weights["tok_emb.weight"].dtype)
    expected = _weights(model)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{weights_path}: does not match {config_path}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    model.load_state_dict(weights, strict=False)   # strict=False: a tied lm_head.weight is not stored
    return model.to(device)


def load_hf(directory, device="cpu", dtype=None):
    """(Guide, tiktoken.Encoding) from a local Hugging Face directory; see hf.load_hf."""
    import hf                          # imported here: hf.py imports this module
    return hf.load_hf(directory, device, dtype)


def save_hf(guide, tokenizer, directory):
    """Write a Hugging Face directory that transformers and vLLM load; see hf.save_hf."""
    import hf
    return hf.save_hf(guide, tokenizer, directory)


# A training checkpoint is out_dir/step-NNNNNN; `best` is a relative symlink to the best step's directory.
_STEP_DIR = re.compile(r"step-(\d{6,})")


def save_training(out_dir, model, optimizer, state, save_model=save_checkpoint):
    """Save a resumable training checkpoint: out_dir/step-NNNNNN with the model (save_model(model, dir): by default
    model.safetensors and config.json; a pretrained guide is written as a Hugging Face directory instead),
    optimizer.pt, rng.pt (torch, CUDA and Python RNG states) and state.json (`state`: "step", "best_step" and
    whatever else the trainer keeps, such as its config and best validation score). The directory is written whole
    under a temporary name and renamed into place: it exists complete or not at all, and the newest one is the run's
    state. Then out_dir/best is pointed at the best step and the directories that neither needs are removed."""
    name = f"step-{state['step']:06d}"
    tmp = os.path.join(out_dir, ".tmp-" + name)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)                        # the torn remains of a save that was killed
    save_model(model, tmp)
    atomic_write(os.path.join(tmp, "state.json"), json.dumps(state, indent=2))
    for file, obj in [("optimizer.pt", optimizer.state_dict()), ("rng.pt", _rng_states())]:
        with open(os.path.join(tmp, file), "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    os.rename(tmp, os.path.join(out_dir, name))   # the commit: one atomic step
    _settle(out_dir, state)


def resume_training(out_dir, device="cpu", load_model=load_checkpoint):
    """(model, optimizer state dict, state) of the newest complete checkpoint in out_dir (its model read by
    load_model(dir, device), the reader that matches save_training's save_model), with the RNG states it saved
    restored; None when there is none. A save that was killed leaves only temporaries behind: they are removed."""
    found = sorted((int(m.group(1)), m.group(0)) for m in map(_STEP_DIR.fullmatch, _entries(out_dir)) if m)
    if not found:
        return None
    path = os.path.join(out_dir, found[-1][1])
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    model = load_model(path, device)
    optimizer_state = torch.load(os.path.join(path, "optimizer.pt"), map_location=device)
    _set_rng_states(torch.load(os.path.join(path, "rng.pt")))   # last: building the model above draws from the RNG
    _settle(out_dir, state)                       # a kill may have come between the rename and the clean-up
    return model, optimizer_state, state


def _settle(out_dir, state):
    """Point out_dir/best at state's best step (a new symlink renamed over the old one: atomic) and remove every
    checkpoint directory but that one and the newest, and any temporaries."""
    link = os.path.join(out_dir, ".tmp-best")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(f"step-{state['best_step']:06d}", link)
    os.replace(link, os.path.join(out_dir, "best"))
    keep = {f"step-{state['step']:06d}", f"step-{state['best_step']:06d}"}
    for entry in _entries(out_dir):
        if (_STEP_DIR.fullmatch(entry) and entry not in keep) or entry.startswith(".tmp-"):
            path = os.path.join(out_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def _entries(directory):
    return os.listdir(directory) if os.path.isdir(directory) else []


def _rng_states():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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
    args = dict(max_new_tokens=new_tokens, eos_id=-1, temperature=1.0)

    def timed(fn, rows):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(model, rows, generator=torch.Generator(device).manual_seed(0), **args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    gen = lambda m, p, **kw: generate(m, p, compile_step=compile_step, **kw)
    timed(gen, prompts)                                    # warm-up (and compilation, with compile_step)
    kv_rate = batch * new_tokens / timed(gen, prompts)
    naive_rate = naive_rows * new_tokens / timed(reference_generate, prompts[:naive_rows])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return {"device": name,
            "compile_step": compile_step, "batch": batch, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "naive_rows_timed": naive_rows, "kv_tokens_per_s": round(kv_rate, 1),
            "naive_tokens_per_s": round(naive_rate, 1), "speedup": round(kv_rate / naive_rate, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The guide model. --bench: rollout throughput, KV cache vs naive.")
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
