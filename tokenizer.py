"""The guide's tokenizer: a byte-level BPE trained here, read back as a tiktoken.Encoding.

train_tokenizer counts the regex-split words of the training text and merges the most frequent pair again and
again; save_tokenizer writes the ranks in tiktoken's rank-file format, and load_tokenizer returns a tiktoken.Encoding
with <|bos|>, <|eos|>, <|pad|> appended. All 256 bytes are tokens, so any Unicode text round-trips.
A pretrained guide brings its own tokenizer instead (hf.py).
"""
import base64
import heapq
import os
import re
from collections import Counter, defaultdict

import tiktoken

from checkpoint import atomic_write

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
    atomic_write(path, "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in by_rank))


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
