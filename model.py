"""The guide: a small Llama-style decoder, read top to bottom in one sitting (nanoGPT's shape).

GuideConfig / Guide: RMSNorm, rotary positions (RoPE), SwiGLU MLP and grouped-query attention through
F.scaled_dot_product_attention; a tiny default (about 3.5M parameters) that trains in minutes on a 2-core CPU.
Guide.forward also takes a preallocated KVCache and each row's left padding, which is all that batched generation
needs; training calls it with the tokens alone. autocast(device) is the precision every caller runs it under: bf16 on
CUDA, none on the CPU.
The rest of the guide's side lives beside it: tokenizer.py (its byte-level BPE), generate.py (sampling and the
decoders), checkpoint.py (saving and loading, resumable training checkpoints) and hf.py (pretrained Hugging Face
guides in and out).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


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
        L = mask.shape[-1] if mask is not None else T                                       # keys attended
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv_head * self.head_dim,
                                     self.n_kv_head * self.head_dim], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, self.head_dim).transpose(1, 2), cos, sin)      # (B, H, T, hd)
        k = apply_rope(k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2), cos, sin)   # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)                        # (B, Hkv, T, hd)
        if cache is not None:
            # Write this call's keys/values into their slots, then attend over the cache's first L slots (the mask
            # hides padding and unwritten ones): all of it in a compiled step, whose shapes then never change.
            cache_k, cache_v = cache
            cache_k.index_copy_(2, slots, k.to(cache_k.dtype))
            cache_v.index_copy_(2, slots, v.to(cache_v.dtype))
            k, v = cache_k[:, :, :L], cache_v[:, :, :L]                                         # (B, Hkv, L, hd)
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
        """A cache of n copies of each row, in place of that row (a GRPO group shares its prompt's prefill)."""
        return KVCache([k.repeat_interleave(n, dim=0) for k in self.k], [v.repeat_interleave(n, dim=0) for v in self.v])


# the two projections that add into the residual stream: initialised smaller than the other matrices
RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.down.weight")


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
                residual = name.endswith(RESIDUAL_PROJECTIONS)
                nn.init.normal_(p, mean=0.0, std=residual_std if residual else 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx, kv_cache=None, start_pos=0, left_pad=None, last_only=False):
        """Logits (B, T, V) for tokens idx (B, T) that sit in slots start_pos .. start_pos + T - 1 of each row;
        (B, 1, V) for the last one alone with last_only (a prefill needs no more).

        left_pad (B,) long: how many padding slots open each row; they are masked out as keys and the row's RoPE
        positions count from its first real token. With kv_cache the keys and values are written into the cache
        and attention covers the slots up to the last one written; start_pos may instead be a 0-dim tensor, and
        attention then covers the whole cache, so that a compiled step sees fixed shapes.
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
            if kv_cache is None:
                n_keys = T
            else:
                n_keys = start_pos + T if isinstance(start_pos, int) else kv_cache.max_len
            keys = torch.arange(n_keys, device=idx.device)                                        # (L,)
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
        if last_only:
            x = x[:, -1:]                                                                         # (B, 1, C)
        return self.lm_head(self.norm(x))                                                         # (B, T, V)


def autocast(device):
    """bf16 autocast on CUDA, a no-op elsewhere: generation, scoring and the recipe's SFT all run under it."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
