"""Pretrained guides in and out: Hugging Face directories <-> model.Guide + tiktoken.Encoding, with no transformers.

1. load_hf(dir) reads config.json (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM; plain RoPE or Llama
   3.1's scaled RoPE), model.safetensors or a sharded model.safetensors.index.json, and tokenizer.json, and returns
   (Guide, HFEncoding). The Guide already is a Llama: HF's separate q/k/v projections are concatenated into its fused
   qkv, and both use the rotate-half RoPE layout (channel i pairs with channel i + head_dim / 2), so no weight is
   permuted.
2. tokenizer.json (byte-level BPE) becomes a tiktoken.Encoding: each vocabulary string is mapped back to bytes through
   GPT-2's byte <-> unicode table, ranks = token ids (the merge order of every such vocabulary), the pre-tokenizer's
   regex is tiktoken's pat_str, added tokens are special tokens, and an NFC normalizer is applied before encoding.
   SentencePiece tokenizers (tokenizer.model, Metaspace, byte fallback) are refused, not approximated.
3. Chat templates are written by hand for the formats the supported families use (ChatML for Qwen2, header
   tokens for Llama 3, and Llama 3.1's, whose template, recognised by its "Cutting Knowledge Date" line, always opens
   with a system turn holding two date lines and the system message); HFEncoding.chat_tokens renders a conversation
   straight to token ids, so text inside a message can never become a special token. The project's role names
   <|bos|>, <|eos|>, <|pad|> resolve to the model's own tokens (eos = its end-of-turn token), so the recipe treats
   both kinds of tokenizer alike.
4. save_hf(guide, tokenizer, dir) writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
   generation_config.json that transformers and vLLM load; a from-scratch guide's BPE is written as a tokenizer.json
   whose merges are every split of every token ranked by the merged token, which is how tiktoken merges.
Every input a user can get wrong raises HFError with one line naming the file; `python hf.py DIR` loads a directory
and prints one line, what it holds or that error. It is its own module because the format plumbing is longer than
the model it feeds.
"""
import json
import os
import sys
import unicodedata

import tiktoken
import torch
from safetensors import safe_open
from safetensors.torch import save

import checkpoint
import model

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "mistral"}
# GPT-2's pre-tokenizer, used by a ByteLevel pre-tokenizer that carries its own regex (use_regex true)
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# what Llama 3.1's chat template writes before the system message; its date is the template's default (Llama 3.2's
# template puts today's date there instead: we keep the fixed one, so a prompt does not change from day to day)
LLAMA31_DATES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


FLOAT_TYPES = ("F16", "BF16", "F32", "F64")


class HFError(Exception):
    """A Hugging Face directory this module cannot read or write; the message is one line naming the file."""


def byte_to_unicode():
    """GPT-2's table: every byte gets a printable character (printable Latin-1 bytes keep their own)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# -------------------------------------------------------------------------------------------------- the tokenizer


class HFEncoding(tiktoken.Encoding):
    """A tiktoken.Encoding that also knows its model's chat format, role tokens and normalizer (module point 3)."""

    def __init__(self, name, *, pat_str, mergeable_ranks, special_tokens, roles, chat=None, nfc=False,
                 source=None):
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        self.roles = roles          # {"<|bos|>": "<|begin_of_text|>" or None, "<|eos|>": ..., "<|pad|>": ...}
        self.chat = chat            # "chatml" | "llama3" | "llama3.1" | None
        self.nfc = nfc
        self.source = source        # (tokenizer.json, tokenizer_config.json) as read, written back by save_hf

    def encode_single_token(self, text):
        if text in self.roles:
            if self.roles[text] is None:
                raise KeyError(f"this tokenizer has no {text} token")
            text = self.roles[text]
        return super().encode_single_token(text)

    def encode(self, text, *args, **kwargs):
        return super().encode(unicodedata.normalize("NFC", text) if self.nfc else text, *args, **kwargs)

    def encode_ordinary(self, text):
        return super().encode_ordinary(unicodedata.normalize("NFC", text) if self.nfc else text)

    def chat_tokens(self, messages, add_generation_prompt=True):
        """Token ids of a conversation in the model's chat format, ready for the assistant's reply."""
        special, text = self.encode_single_token, lambda s: self.encode(s, disallowed_special=())
        out = []
        if self.chat == "chatml":           # <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
            for m in messages:
                out += [special("<|im_start|>")] + text(f"{m['role']}\n{m['content']}") + [special("<|im_end|>")]
                out += text("\n")
            return out + ([special("<|im_start|>")] + text("assistant\n") if add_generation_prompt else [])
        if self.chat in ("llama3", "llama3.1"):    # <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
            turns = [(m["role"], m["content"].strip()) for m in messages]
            if self.chat == "llama3.1":     # 3.1 always opens with a system turn: the dates, then the system message
                system = turns.pop(0)[1] if turns and turns[0][0] == "system" else ""
                turns.insert(0, ("system", LLAMA31_DATES + system))
            head = lambda role: [special("<|start_header_id|>")] + text(role) + [special("<|end_header_id|>")]
            out = [special("<|begin_of_text|>")]
            for role, content in turns:
                out += head(role) + text("\n\n" + content) + [special("<|eot_id|>")]
            return out + (head("assistant") + text("\n\n") if add_generation_prompt else [])
        bos = [special("<|bos|>")] if self.roles.get("<|bos|>") else []
        return bos + text("\n\n".join(m["content"] for m in messages))


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise HFError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise HFError(f"{path}: not valid JSON ({e})") from None


def _pattern(pre, path):
    """tiktoken's pat_str from a tokenizer.json pre_tokenizer: a ByteLevel one alone, or a regex Split + ByteLevel."""
    kind = (pre or {}).get("type")
    if kind == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True):
        return GPT2_PAT
    if kind == "Sequence":
        steps = pre.get("pretokenizers", [])
        if (len(steps) == 2 and steps[0].get("type") == "Split" and "Regex" in steps[0].get("pattern", {})
                and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
                and steps[1].get("type") == "ByteLevel" and not steps[1].get("add_prefix_space")
                and not steps[1].get("use_regex", True)):
            return steps[0]["pattern"]["Regex"]
    raise HFError(f"{path}: unsupported pre_tokenizer {json.dumps(pre)[:120]} (need byte-level BPE: ByteLevel, or "
                  f"a regex Split then ByteLevel, without add_prefix_space)")


def _normalizer(norm, path):
    """True for NFC, False for none; anything else is refused."""
    if norm is None:
        return False
    kinds = [n.get("type") for n in norm.get("normalizers", [])] if norm.get("type") == "Sequence" else [norm["type"]]
    if all(k == "NFC" for k in kinds):
        return bool(kinds)
    raise HFError(f"{path}: unsupported normalizer {kinds} (only NFC or none)")


def load_hf_tokenizer(directory, chat=None):
    """The HFEncoding for directory/tokenizer.json (module point 2)."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, "tokenizer.model")):
            raise HFError(f"{directory}: SentencePiece-only tokenizer (tokenizer.model, no tokenizer.json); "
                          f"need a byte-level BPE tokenizer.json")
        raise HFError(f"{path}: missing (a byte-level BPE tokenizer.json is needed)")
    tj = _read_json(path)
    bpe = tj.get("model") or {}
    if bpe.get("type", "BPE") != "BPE" or bpe.get("byte_fallback") or "vocab" not in bpe:
        raise HFError(f"{path}: a {bpe.get('type')} model{' with byte fallback' if bpe.get('byte_fallback') else ''}"
                      f" (SentencePiece-style); need a byte-level BPE")
    pat_str, nfc = _pattern(tj.get("pre_tokenizer"), path), _normalizer(tj.get("normalizer"), path)
    to_byte = {c: b for b, c in byte_to_unicode().items()}
    added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    ranks = {}
    for token, i in bpe["vocab"].items():
        if token in added:
            continue                        # GPT-2 keeps <|endoftext|> in the vocabulary too: a special token here
        try:
            ranks[bytes(to_byte[c] for c in token)] = i
        except KeyError:
            raise HFError(f"{path}: vocabulary entry {token!r} is not byte-level") from None
    if len(set(ranks.values())) != len(ranks) or any(bytes([b]) not in ranks for b in range(256)):
        raise HFError(f"{path}: the vocabulary must give each token its own id and hold all 256 bytes")
    cfg_path = os.path.join(directory, "tokenizer_config.json")
    tok_cfg = _read_json(cfg_path) if os.path.isfile(cfg_path) else {}

    def token_name(key):
        value = tok_cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value is not None and value not in added:
            raise HFError(f"{cfg_path}: {key} {value!r} is not an added token of {path}")
        return value

    jinja = os.path.join(directory, "chat_template.jinja")   # where newer transformers versions save the template
    if os.path.isfile(jinja) and "chat_template" not in tok_cfg:
        with open(jinja, encoding="utf-8") as f:
            tok_cfg["chat_template"] = f.read()               # kept in the source, so save_hf writes it back
    if chat is None:
        chat = "chatml" if "<|im_start|>" in added else "llama3" if "<|start_header_id|>" in added else None
        template = json.dumps(tok_cfg.get("chat_template", ""))   # a string, or a list of named templates
        if chat == "llama3" and "Cutting Knowledge Date" in template:
            chat = "llama3.1"
    eos = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama3.1": "<|eot_id|>"}.get(chat)
    eos = eos or token_name("eos_token")
    if eos not in added:
        raise HFError(f"{directory}: no end-of-sequence token (set eos_token in tokenizer_config.json)")
    roles = {"<|bos|>": token_name("bos_token"), "<|eos|>": eos, "<|pad|>": token_name("pad_token") or eos}
    name = os.path.basename(os.path.normpath(directory)) or "hf"
    return HFEncoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=added, roles=roles, chat=chat,
                      nfc=nfc, source=(tj, tok_cfg))


# ------------------------------------------------------------------------------------------------------ the model


# Bounds on config.json's sizes, checked (with the file and field named) before anything is allocated from them;
# GuideConfig checks the same again for every other source of a config.
SIZE_FIELDS = {"vocab_size": 1 << 21, "num_hidden_layers": 1024, "num_attention_heads": 1024,
               "num_key_value_heads": 1024, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
               "max_position_embeddings": 1 << 20, "head_dim": 1 << 18, "sliding_window": 1 << 30}


def _field(hf, name, path, kind, default=None, required=False):
    """hf[name] checked to be of `kind` (a size: an integer in [1, SIZE_FIELDS[name]]); null counts as absent."""
    value = hf.get(name)
    if value is None:
        if required:
            raise HFError(f"{path}: missing field {name!r}")
        return default
    if kind == "size":
        if type(value) is not int or not 1 <= value <= SIZE_FIELDS[name]:
            raise HFError(f"{path}: {name} must be an integer in [1, {SIZE_FIELDS[name]}], "
                          f"got {json.dumps(value)[:40]}")
    elif kind == "number":
        if type(value) not in (int, float) or not 0 < value < float("inf"):
            raise HFError(f"{path}: {name} must be a positive number, got {json.dumps(value)[:40]}")
    elif not isinstance(value, kind) or (kind is int and type(value) is bool):
        wanted = "an object" if kind is dict else "a list" if kind is list else kind.__name__
        raise HFError(f"{path}: {name} must be {wanted}, got {type(value).__name__}")
    return value


def _config(hf, path):
    """GuideConfig from a Llama / Qwen2 / Mistral config.json (dict), every field checked first."""
    if not isinstance(hf, dict):
        raise HFError(f"{path}: must be a JSON object, got {type(hf).__name__}")
    archs = _field(hf, "architectures", path, list, [None])
    arch = (archs or [None])[0]
    if arch not in ARCHITECTURES:
        raise HFError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias") or (arch != "Qwen2ForCausalLM"
                                                                       and hf.get("attention_bias")):
        raise HFError(f"{path}: unsupported options (need hidden_act silu, no mlp_bias, no attention_bias)")
    # transformers >= 5 writes rope_parameters {rope_type, rope_theta, ...}; older files rope_theta, rope_scaling
    rope_field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = _field(hf, rope_field, path, dict, {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise HFError(f"{path}: RoPE scaling {rope_type!r} is not supported (plain RoPE or Llama 3's)")
    theta = _field(rope, "rope_theta", path, "number") or _field(hf, "rope_theta", path, "number", 10000.0)
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if rope_type == "llama3" and not all(k in rope for k in keys):
        raise HFError(f"{path}: llama3 RoPE scaling needs {', '.join(keys)}")
    scaling = {k: _field(rope, k, path, "number") for k in keys} if rope_type == "llama3" else None
    sizes = {name: _field(hf, name, path, "size", required=name not in ("num_key_value_heads", "head_dim",
                                                                         "max_position_embeddings", "sliding_window"))
             for name in SIZE_FIELDS}
    n_head = sizes["num_attention_heads"]
    n_kv = sizes["num_key_value_heads"] or n_head
    head_dim = sizes["head_dim"]
    if head_dim is None and sizes["hidden_size"] % n_head:
        raise HFError(f"{path}: hidden_size {sizes['hidden_size']} is not a multiple of num_attention_heads {n_head} "
                      f"(and there is no head_dim)")
    head_dim = head_dim or sizes["hidden_size"] // n_head
    if n_head % n_kv or head_dim % 2:
        raise HFError(f"{path}: num_attention_heads {n_head} must be a multiple of num_key_value_heads {n_kv}, and the "
                      f"head size {head_dim} even")
    max_len = sizes["max_position_embeddings"] or 4096
    if sizes["sliding_window"] and (arch == "MistralForCausalLM" or hf.get("use_sliding_window")):
        max_len = min(max_len, sizes["sliding_window"])   # within the window, sliding attention is full attention
    tie = _field(hf, "tie_word_embeddings", path, bool, False)
    eps = _field(hf, "rms_norm_eps", path, "number", 1e-6)
    try:
        return model.GuideConfig(
            vocab_size=sizes["vocab_size"], n_layer=sizes["num_hidden_layers"], n_head=n_head, n_kv_head=n_kv,
            n_embd=sizes["hidden_size"], ffn_hidden=sizes["intermediate_size"], max_seq_len=max_len,
            rope_theta=float(theta), tie_embeddings=tie, qkv_bias=arch == "Qwen2ForCausalLM", norm_eps=float(eps),
            head_dim=head_dim, rope_scaling=scaling)
    except (ValueError, TypeError) as e:
        raise HFError(f"{path}: {e}") from None


def _hf_to_guide_names(cfg):
    """{guide parameter name: [HF tensor names concatenated along dim 0]}."""
    names = {"tok_emb.weight": ["model.embed_tokens.weight"], "norm.weight": ["model.norm.weight"]}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = ["lm_head.weight"]
    for i in range(cfg.n_layer):
        g, h = f"blocks.{i}.", f"model.layers.{i}."
        names[g + "attn.qkv.weight"] = [h + f"self_attn.{x}_proj.weight" for x in "qkv"]
        if cfg.qkv_bias:
            names[g + "attn.qkv.bias"] = [h + f"self_attn.{x}_proj.bias" for x in "qkv"]
        names[g + "attn.proj.weight"] = [h + "self_attn.o_proj.weight"]
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            names[g + f"mlp.{ours}.weight"] = [h + f"mlp.{theirs}.weight"]
        names[g + "attn_norm.weight"] = [h + "input_layernorm.weight"]
        names[g + "mlp_norm.weight"] = [h + "post_attention_layernorm.weight"]
    return names


def _shard_path(directory, index, shard):
    """A shard named in the index, confined to the model directory: a relative name with no '..' (symlinks inside
    are fine: a Hugging Face cache links its snapshots to blobs)."""
    if not isinstance(shard, str) or not shard or os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
        raise HFError(f"{index}: shard {str(shard)[:80]!r} is not a file name inside the model directory")
    return os.path.join(directory, shard)


def _weight_files(directory):
    """{tensor name: file} from model.safetensors or model.safetensors.index.json; every listed shard must exist."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        try:
            with safe_open(single, "pt") as f:
                return {k: single for k in f.keys()}
        except Exception as e:                  # safetensors raises its own error type for torn or corrupt files
            raise HFError(f"{single}: torn or corrupt safetensors file ({e})") from None
    if not os.path.isfile(index):
        raise HFError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    meta = _read_json(index)
    weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
    if not isinstance(weight_map, dict):
        raise HFError(f"{index}: no weight_map object")
    files = {k: _shard_path(directory, index, v) for k, v in weight_map.items()}
    for shard in sorted(set(weight_map.values())):
        if not os.path.isfile(files[next(k for k, v in weight_map.items() if v == shard)]):
            raise HFError(f"{index}: shard {shard} is missing")
    return files


def load_hf_config(directory):
    """The GuideConfig of a Hugging Face directory, from its config.json alone (no weights are read)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise HFError(f"{config_path}: missing (not a Hugging Face model directory)")
    return _config(_read_json(config_path), config_path)


def load_hf(directory, device="cpu", dtype=None):
    """(Guide, HFEncoding) from a local Hugging Face directory; dtype None keeps the stored precision."""
    config_path = os.path.join(directory, "config.json")
    cfg = load_hf_config(directory)
    tokenizer = load_hf_tokenizer(directory)
    files = _weight_files(directory)
    names = _hf_to_guide_names(cfg)
    missing = sorted(h for hs in names.values() for h in hs if h not in files)
    if missing:
        raise HFError(f"{directory}: weights missing from the safetensors files: {missing[:3]}")
    handles = {}
    with torch.device("meta"):
        guide = model.Guide(cfg)
    try:
        for path in sorted(set(files.values())):
            handles[path] = safe_open(path, "pt")
        # shapes and types from the headers first: no tensor is read until every one fits the config
        for ours, hs in names.items():
            shapes = []
            for h in hs:
                piece = handles[files[h]].get_slice(h)
                if piece.get_dtype() not in FLOAT_TYPES:
                    raise HFError(f"{files[h]}: tensor {h} is {piece.get_dtype()}, not a floating-point type")
                shapes.append(list(piece.get_shape()))
            shape = [sum(s[0] for s in shapes)] + shapes[0][1:] if all(s and s[1:] == shapes[0][1:]
                                                                       for s in shapes) else None
            if shape != list(guide.state_dict()[ours].shape):
                raise HFError(f"{config_path}: weights do not fit the config: {hs[0]} {shapes[0]}, expected "
                              f"{list(guide.state_dict()[ours].shape)}")
        state = {ours: torch.cat([handles[files[h]].get_tensor(h) for h in hs]) for ours, hs in names.items()}
    except HFError:
        raise
    except Exception as e:                      # safetensors raises its own error type for torn or corrupt files
        raise HFError(f"{directory}: cannot read safetensors weights ({e})") from None
    guide.to_empty(device=device)                 # no random init of billions of weights that are overwritten next
    if cfg.tie_embeddings:
        guide.lm_head.weight = guide.tok_emb.weight  # to_empty gives each module its own tensor: tie them again
    wrong = [f"{k} {tuple(v.shape)}" for k, v in state.items() if v.shape != guide.state_dict()[k].shape]
    if wrong:
        raise HFError(f"{config_path}: weights do not fit the config: {wrong[:3]}")
    guide.to(dtype or state["tok_emb.weight"].dtype)
    guide.load_state_dict(state, strict=False)    # strict=False: a tied lm_head.weight is the embedding
    # the RoPE tables stay fp32 whatever the weights' precision: bf16 angles would blur far positions
    guide.rope_cos, guide.rope_sin = (t.to(device) for t in model.rope_tables(cfg))
    return guide.eval(), tokenizer


# ---------------------------------------------------------------------------------------------------------- export


def _tokenizer_json(tok):
    """A tokenizer.json for a plain tiktoken.Encoding (module point 4)."""
    specials = {s: tok.encode_single_token(s) for s in tok.special_tokens_set}
    ranks = {tok.decode_single_token_bytes(i): i for i in range(tok.n_vocab) if i not in specials.values()
             and _has_token(tok, i)}
    to_char = byte_to_unicode()
    text = lambda b: "".join(to_char[x] for x in b)
    merges = []
    for token, rank in ranks.items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ranks and token[k:] in ranks]
        merges += [(rank, ranks[a], ranks[b], text(a), text(b)) for a, b in splits]
    merges.sort()
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tok._pat_str}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for s, i in sorted(specials.items(),
                                                                                       key=lambda x: x[1])],
            "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {text(t): i for t, i in ranks.items()}, "merges": [[a, b] for *_, a, b in merges]}}


def _has_token(tok, i):
    try:
        tok.decode_single_token_bytes(i)
        return True
    except KeyError:
        return False


def save_hf(guide, tokenizer, directory):
    """Write guide and tokenizer as a Hugging Face directory (LlamaForCausalLM, or Qwen2ForCausalLM with qkv bias)."""
    cfg = guide.config
    if cfg.vocab_size < tokenizer.n_vocab:
        raise HFError(f"{directory}: the tokenizer has {tokenizer.n_vocab} tokens but the guide only "
                      f"{cfg.vocab_size}")
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach() for k, v in guide.state_dict().items()}
    weights = {}
    for ours, theirs in _hf_to_guide_names(cfg).items():
        sizes = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
        parts = state[ours].split(sizes) if len(theirs) == 3 else [state[ours]]
        weights.update({h: p.contiguous().cpu() for h, p in zip(theirs, parts)})
    role = lambda name: (tokenizer.roles.get(name) if isinstance(tokenizer, HFEncoding)
                         else name if name in tokenizer.special_tokens_set else None)
    token_id = lambda name: tokenizer.encode_single_token(role(name)) if role(name) else None
    arch = "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"
    config = {"architectures": [arch], "model_type": "qwen2" if cfg.qkv_bias else "llama",
              "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.ffn_hidden,
              "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim, "hidden_act": "silu",
              "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
              "rope_scaling": {"rope_type": "llama3", **cfg.rope_scaling} if cfg.rope_scaling else None,
              "rope_parameters": {"rope_type": "llama3" if cfg.rope_scaling else "default",
                                  "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})},
              "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
              "bos_token_id": token_id("<|bos|>"), "eos_token_id": token_id("<|eos|>"),
              "torch_dtype": str(state["tok_emb.weight"].dtype).removeprefix("torch.")}
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                  "pad_token_id": token_id("<|pad|>"), "do_sample": False}
    if isinstance(tokenizer, HFEncoding) and tokenizer.source:
        tok_json, tok_config = tokenizer.source          # written back as read: the model keeps its own tokenizer
    else:
        tok_json, tok_config = _tokenizer_json(tokenizer), {}
    tok_config = {**tok_config, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len,
                  "bos_token": role("<|bos|>"), "eos_token": role("<|eos|>"), "pad_token": role("<|pad|>")}
    tok_config.pop("added_tokens_decoder", None)         # tokenizer.json holds the added tokens
    files = {"model.safetensors": save(weights, metadata={"format": "pt"}),
             "config.json": json.dumps(config, indent=2).encode(),
             "generation_config.json": json.dumps(generation, indent=2).encode(),
             "tokenizer.json": json.dumps(tok_json, ensure_ascii=False).encode(),
             "tokenizer_config.json": json.dumps(tok_config, indent=2).encode()}
    for name, data in files.items():
        checkpoint.atomic_write(os.path.join(directory, name), data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python hf.py DIR   (load a Hugging Face directory and print what it holds)")
    try:
        guide, enc = load_hf(sys.argv[1])
    except HFError as e:
        sys.exit(f"error: {e}")               # one line, exit status 1: the message names the file
    print(json.dumps({"config": vars(guide.config), "params": sum(p.numel() for p in guide.parameters()),
                      "tokens": enc.n_vocab, "chat": enc.chat, "roles": enc.roles}))
