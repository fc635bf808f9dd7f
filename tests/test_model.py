"""Tests for the guide: model.py, tokenizer.py, generate.py (batched KV-cache generation against the reference
decode, log-probs) and checkpoint.py.

Exactness tests run a float64 model, so a greedy choice never hinges on float32 rounding between the cached and
the uncached computation.
"""
import base64
import json
import os

import pytest
import tiktoken.load
import torch

import model as M
from checkpoint import CheckpointError, load_checkpoint, resume_training, save_checkpoint, save_training
from generate import SamplingOptions, completion_logprobs, generate, generate_groups, reference_generate
from tokenizer import SPECIAL_TOKENS, load_tokenizer, save_tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting

TINY = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=96,
            tie_embeddings=False)   # a tied model at random init mostly repeats its last token: too easy a test
TEXT = ("Tom has 12 apples and buys 7 more. How many apples does Tom have now? #### 19\n"
        "<strategy>\n1. Add 12 to 7.\n2. Multiply the result of step 1 by 3.\n</strategy>\n") * 20 + \
       "The quick brown fox jumps over the lazy dog; it's 3:45pm and we'll see.\n" * 10


def tiny_model(dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    return M.Guide(M.GuideConfig(**{"vocab_size": 300, **TINY, **overrides})).to(dtype).eval()


def mixed_prompts(vocab=300, lengths=(1, 5, 12, 3), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab - 3, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "guide.tiktoken"
    save_tokenizer(train_tokenizer([TEXT], 360), path)
    return load_tokenizer(path)


# ------------------------------------------------------------------------------------------------------- model

def test_default_config_is_a_few_million_parameters():
    n = sum(p.numel() for p in M.Guide(M.GuideConfig()).parameters())
    assert 2_000_000 < n < 6_000_000


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="n_kv_head"):
        M.GuideConfig(n_head=4, n_kv_head=3)


# --------------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trips_any_unicode(tokenizer):
    assert tokenizer.n_vocab == 360                      # the specials count in vocab_size
    assert [tokenizer.encode_single_token(s) for s in SPECIAL_TOKENS] == [357, 358, 359]
    for text in ["", TEXT, "emoji 🙂👍🏽 and 👨‍👩‍👧", "中文 日本語のテキスト 한국어", "e\u0301 \x00 tab\tnl\n\r\n  ",
                 "<|eos|> stays text", "x²  ½ ٣ _under_score__"]:
        ids = tokenizer.encode_ordinary(text)
        assert tokenizer.decode(ids) == text
        assert max(ids, default=0) < 357                 # a special token's spelling in text is never special
    assert len(tokenizer.encode_ordinary(TEXT)) < len(TEXT.encode()) / 3    # the merges learned the text


def test_tokenizer_file_is_tiktoken_format(tmp_path, monkeypatch):
    ranks = train_tokenizer(["ab ab ab ab cd"], 262)
    assert ranks[b"ab"] == 256 and ranks[b" ab"] == 257   # most frequent pair first, then its successor
    assert len(ranks) == 259 and sorted(ranks.values()) == list(range(259))
    path = tmp_path / "t.tiktoken"
    save_tokenizer(ranks, path)
    first = path.read_text().splitlines()[256]
    assert first == f"{base64.b64encode(b'ab').decode()} 256"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")          # tiktoken's own reader, without its download cache
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == ranks


def test_load_tokenizer_names_bad_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("YQ== 0\nnot a line\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken: line 2"):
        load_tokenizer(path)
    with pytest.raises(ValueError, match="missing.tiktoken"):
        load_tokenizer(tmp_path / "missing.tiktoken")


# -------------------------------------------------------------------------------------------------- generation

def test_kv_cache_generate_equals_reference_decode_greedy():
    model, prompts = tiny_model(), mixed_prompts()
    free = reference_generate(model, prompts, SamplingOptions(16, eos_id=-1, temperature=0))
    # EOS: a token row 1 emits that some other row never emits, so rows end at different steps.
    eos = next(t for t in free.tokens[1].tolist() if any(t not in r for r in free.tokens.tolist()))
    ref = reference_generate(model, prompts, SamplingOptions(16, eos_id=eos, temperature=0))
    out = generate(model, prompts, SamplingOptions(16, eos_id=eos, temperature=0))
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.mask, ref.mask)
    assert torch.allclose(out.logprobs, ref.logprobs, rtol=0, atol=1e-10)
    assert not out.mask.all() and out.mask.all(dim=1).any()             # some rows ended, some ran to the limit
    for row, mask in zip(out.tokens.tolist(), out.mask.tolist()):
        n = sum(mask)
        assert mask == [True] * n + [False] * (len(mask) - n)
        assert row[n:] == [eos] * (len(row) - n) and (n == 16 or row[n - 1] == eos)   # EOS counted in the mask


def test_logprobs_equal_full_forward_and_ignore_truncation():
    model, prompts = tiny_model(torch.float32), mixed_prompts()
    g = torch.Generator().manual_seed(3)
    out = generate(model, prompts, SamplingOptions(12, eos_id=5, temperature=0.7, top_k=40, top_p=0.9), generator=g)
    full = completion_logprobs(model, prompts, out.tokens, temperature=0.7)
    assert torch.allclose(full[out.mask], out.logprobs[out.mask], rtol=0, atol=1e-4)
    assert (out.logprobs[~out.mask] == 0).all()
    # top_k=1 samples the greedy token, yet its log-prob is the untruncated one, not log(1) = 0.
    greedy = generate(model, prompts, SamplingOptions(12, eos_id=5, temperature=0))
    top1 = generate(model, prompts, SamplingOptions(12, eos_id=5, temperature=1.0, top_k=1), generator=g)
    assert torch.equal(top1.tokens, greedy.tokens)
    assert torch.allclose(top1.logprobs, greedy.logprobs, rtol=0, atol=1e-6)
    assert (greedy.logprobs[greedy.mask] < 0).all()
    scored = completion_logprobs(model, prompts, greedy.tokens, temperature=0)       # temperature 0 scores with 1
    assert torch.allclose(scored[greedy.mask], greedy.logprobs[greedy.mask], rtol=0, atol=1e-4)
    scored.sum().backward()                                                            # GRPO differentiates it
    assert model.tok_emb.weight.grad.abs().sum() > 0


def test_seeded_sampling_is_reproducible():
    model, prompts = tiny_model(torch.float32), mixed_prompts()
    run = lambda seed: generate(model, prompts, SamplingOptions(10, eos_id=-1, temperature=1.0, top_p=0.95),
                                generator=torch.Generator().manual_seed(seed))
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_group_prefill_equals_separate_prefills():
    model, prompt = tiny_model(), mixed_prompts()[2]
    sampling = SamplingOptions(14, eos_id=-1, temperature=1.0)
    group = generate_groups(model, [prompt], 5, sampling, generator=torch.Generator().manual_seed(4))
    separate = generate(model, [prompt] * 5, sampling, generator=torch.Generator().manual_seed(4))
    assert torch.equal(group.tokens, separate.tokens) and torch.equal(group.mask, separate.mask)
    assert torch.allclose(group.logprobs, separate.logprobs, rtol=0, atol=1e-10)
    assert len(set(map(tuple, group.tokens.tolist()))) > 1          # the G rows are sampled independently


def test_groups_in_one_batch_sample_what_each_group_samples_alone():
    # GRPO decodes a step's groups together, each from its own generator: a group's samples must not depend on
    # the other groups in the batch (prompts of different lengths: left padding and a longer loop around it).
    model, prompts = tiny_model(torch.float64), mixed_prompts()
    sampling = SamplingOptions(16, eos_id=5, temperature=1.0)
    generators = lambda: [torch.Generator().manual_seed(100 + j) for j in range(len(prompts))]
    together = generate_groups(model, prompts, 4, sampling, generator=generators())
    assert not together.mask.all()                                   # some rows end early, at EOS
    for j, (prompt, g) in enumerate(zip(prompts, generators())):
        alone = generate_groups(model, [prompt], 4, sampling, generator=[g])
        rows, T = slice(4 * j, 4 * j + 4), alone.tokens.shape[1]
        assert torch.equal(together.tokens[rows, :T], alone.tokens)
        assert torch.equal(together.mask[rows, :T], alone.mask) and not together.mask[rows, T:].any()
        assert torch.allclose(together.logprobs[rows, :T], alone.logprobs, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="2 generators for 4 prompts"):
        generate_groups(model, prompts, 4, sampling, generator=generators()[:2])


def test_decoding_stops_early_once_every_row_has_ended():
    model, prompt = tiny_model(), mixed_prompts()[1]
    free = generate_groups(model, [prompt], 3, SamplingOptions(20, eos_id=-1, temperature=0))
    eos = free.tokens[0, 2].item()
    n = free.tokens[0].tolist().index(eos) + 1
    out = generate_groups(model, [prompt], 3, SamplingOptions(20, eos_id=eos, temperature=0))
    assert out.tokens.shape == (3, n) and out.mask.all()


def test_stop_strings_end_a_row_after_the_completing_token(tokenizer):
    model = tiny_model(vocab_size=tokenizer.n_vocab)
    prompts = [tokenizer.encode_ordinary(p) for p in ("Tom has 12 apples", "<strategy>\n1.")]
    eos = tokenizer.encode_single_token("<|eos|>")
    free = generate(model, prompts, SamplingOptions(12, eos_id=eos, temperature=0), tokenizer=tokenizer)
    assert free.mask.all()                                # no EOS: only the stop string can end a row below
    row = free.tokens[0].tolist()
    # A stop string that straddles tokens 3 and 4 of row 0 (the last byte of one and the first of the next).
    stop_bytes = tokenizer.decode_bytes(row[3:4])[-1:] + tokenizer.decode_bytes(row[4:5])[:1]
    stop = stop_bytes.decode("utf-8")

    def expected_length(tokens):
        return next((t for t in range(1, len(tokens) + 1) if stop_bytes in tokenizer.decode_bytes(tokens[:t])),
                    len(tokens))

    out = generate(model, prompts, SamplingOptions(12, eos_id=eos, temperature=0, stop_strings=[stop]),
                   tokenizer=tokenizer)
    for i, full_row in enumerate(free.tokens.tolist()):
        n = expected_length(full_row)
        assert out.mask[i].sum().item() == n and out.tokens[i, :n].tolist() == full_row[:n]
        assert out.texts[i] == tokenizer.decode(full_row[:n])
    assert out.mask[0].sum().item() <= 5 and stop in out.texts[0]
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, prompts, SamplingOptions(4, eos_id=-1, stop_strings=["x"]))


def test_a_model_with_more_rows_than_its_tokenizer_samples_only_the_tokenizers_tokens(tokenizer):
    """A pretrained model's embedding is often padded past its tokenizer: those ids are never sampled, and the
    log-probs are the policy over the tokenizer's tokens, as completion_logprobs scores them."""
    model = tiny_model(vocab_size=tokenizer.n_vocab + 40)
    with torch.no_grad():                        # make the padding rows the likeliest tokens
        model.lm_head.weight[tokenizer.n_vocab:] = model.lm_head.weight[:40] * 50
    prompts = [tokenizer.encode_ordinary(p) for p in ("Tom has 12 apples", "<strategy>\n1.")]
    out = generate(model, prompts, SamplingOptions(16, eos_id=-1), generator=torch.Generator().manual_seed(0),
                   tokenizer=tokenizer)
    assert out.tokens.max().item() < tokenizer.n_vocab
    scored = completion_logprobs(model, prompts, out.tokens, n_vocab=tokenizer.n_vocab)
    torch.testing.assert_close(scored, out.logprobs)
    free = generate(model, prompts, SamplingOptions(16, eos_id=-1), generator=torch.Generator().manual_seed(0))
    assert free.tokens.max().item() >= tokenizer.n_vocab         # without a tokenizer, every row can be sampled


def test_generate_refuses_bad_requests():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 90], SamplingOptions(10, eos_id=2))
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], SamplingOptions(10, eos_id=2))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], SamplingOptions(10, eos_id=2, top_p=0))


# ------------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("tie, bias, dtype", [(True, False, torch.float32), (False, True, torch.float64)])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, tie, bias, dtype):
    model = tiny_model(dtype, tie_embeddings=tie, qkv_bias=bias)
    with torch.no_grad():
        for p in model.parameters():          # make every tensor distinct, biases and norms included
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]  # no temps
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tie
    idx = torch.tensor([mixed_prompts()[2]])
    assert torch.equal(model(idx), loaded(idx))


def trained_step(net, optimizer, seed):
    """One AdamW step on a random batch, so the optimizer has moments to save."""
    idx = torch.randint(0, 297, (2, 8), generator=torch.Generator().manual_seed(seed))
    loss = net(idx).float().logsumexp(-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_training_checkpoints_resume_exactly_and_keep_only_newest_and_best(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    assert resume_training(out) is None
    net = tiny_model(torch.float32).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for step, best in [(1, 1), (2, 2), (3, 2), (4, 2)]:
        trained_step(net, optimizer, step)
        save_training(out, net, optimizer, dict(step=step, best_step=best, note="mine"))
    expected_rand = torch.rand(3)          # what the RNG gives right after the last save...
    torch.manual_seed(1234)
    resumed, optimizer_state, state = resume_training(out)
    assert torch.equal(torch.rand(3), expected_rand)   # ...is what it gives after the resume
    assert sorted(os.listdir(out)) == ["best", "step-000002", "step-000004"]
    assert os.readlink(out / "best") == "step-000002" and load_checkpoint(out / "best").config == net.config
    assert state == dict(step=4, best_step=2, note="mine")
    a, b = net.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    fresh.load_state_dict(optimizer_state)
    trained_step(net, optimizer, 5)         # one more step from either side gives the same weights
    trained_step(resumed, fresh, 5)
    a, b = net.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_save_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    net = tiny_model(torch.float32)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    save_training(out, net, optimizer, dict(step=10, best_step=10))
    # killed while writing step 20: a torn temporary directory
    os.makedirs(out / ".tmp-step-000020")
    (out / ".tmp-step-000020" / "model.safetensors").write_bytes(b"torn")
    assert resume_training(out)[2]["step"] == 10
    assert sorted(os.listdir(out)) == ["best", "step-000010"]
    # killed after the rename, before `best` moved and the old directory went: the newest one is the state
    save_training(out, net, optimizer, dict(step=20, best_step=20))
    os.makedirs(out / "step-000030")
    for file in os.listdir(out / "step-000020"):
        (out / "step-000030" / file).write_bytes((out / "step-000020" / file).read_bytes())
    (out / "step-000030" / "state.json").write_text(json.dumps(dict(step=30, best_step=30)))
    assert resume_training(out)[2]["step"] == 30
    assert sorted(os.listdir(out)) == ["best", "step-000030"] and os.readlink(out / "best") == "step-000030"


def test_broken_checkpoints_give_a_clear_error(tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(ckpt)
    save_checkpoint(tiny_model(torch.float32), ckpt)
    weights, config = ckpt / "model.safetensors", ckpt / "config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])              # torn write
    with pytest.raises(CheckpointError, match=r"model\.safetensors: torn or corrupt"):
        load_checkpoint(ckpt)
    weights.write_bytes(good_weights)

    config.write_text(good_config.replace('"n_layer": 2', '"n_layer": 3'))   # config from another model
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match .*config\.json"):
        load_checkpoint(ckpt)
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not a valid GuideConfig"):
        load_checkpoint(ckpt)
    config.write_text(good_config)
    os.remove(weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(ckpt)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randint(0, 300, (2, 20))
    grads = []
    for checkpointing in (False, True):
        net = tiny_model().train()
        net.grad_checkpointing = checkpointing
        net(x).logsumexp(-1).sum().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-12) for k in grads[0])


def test_config_head_dim_and_norm_eps():
    cfg = M.GuideConfig(n_embd=64, n_head=4, head_dim=32, norm_eps=1e-6)   # heads wider than n_embd / n_head
    net = M.Guide(cfg)
    assert net.blocks[0].attn.qkv.out_features == (4 + 2 * cfg.n_kv_head) * 32 and net.norm.eps == 1e-6
    assert net(torch.tensor([[1, 2, 3]])).shape == (1, 3, cfg.vocab_size)
    assert M.GuideConfig(n_embd=64, n_head=4).head_dim == 16


@pytest.mark.parametrize("field,value", [("vocab_size", 300_000_000), ("vocab_size", 8_000_000), ("n_layer", -3),
                                         ("n_head", 0), ("n_embd", True), ("max_seq_len", 200_000_000),
                                         ("ffn_hidden", -1)])
def test_absurd_checkpoint_configs_fail_before_allocating(tmp_path, field, value):
    import time
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model(torch.float32), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(config, **{field: value})))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(ckpt)
    assert time.monotonic() - start < 1.0      # no tensor of the claimed size was made
