"""Parity with Hugging Face: hf.load_hf / hf.save_hf against transformers and tokenizers (test-only dependencies)."""
import functools
import json
import os
import random
import subprocess
import sys

import pytest
import torch

import generate
import hf
import model as M
import tokenizer

# Test-only dependencies (requirements-dev.txt). Without them these tests skip, except under .ci/run, which
# installs them and sets EXECTUNE_REQUIRE_DEV=1 so that a missing one fails instead.
if os.environ.get("EXECTUNE_REQUIRE_DEV") == "1":
    import tokenizers
    import transformers
else:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
            r"\s+(?!\S)|\s+")
LLAMA3_PAT = QWEN_PAT.replace(r"\p{N}|", r"\p{N}{1,3}|")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
PIECES = ["the", " apples", "Mia", " bought", " 12", "345", " 7", "0.5", "$", "1,234", "'s", "'LL", " don't", "\n",
          "\n\n", "   ", "\t", " \t \n ", "!!", "?", ".", " (x)", " café", " cafe\u0301", " naïve", " 你好", "世界",
          " 😀", "🚀🚀", " Ωμέγα", " Привет", "١٢٣", " ß", "_", "__init__", " #### 42", "<strategy>", "1."]


def random_text(rng, n):
    return "".join(rng.choice(PIECES + SPECIALS if rng.random() < 0.05 else PIECES) for _ in range(n))


@functools.cache
def train_bpe(kind, vocab_size=600):
    """A byte-level BPE trained by `tokenizers`: GPT-2's ByteLevel pre-tokenizer, Qwen2's regex Split + NFC, or Llama
    3's regex Split with its header tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        if kind == "qwen2":
            tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_PAT if kind == "qwen2" else LLAMA3_PAT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [random_text(rng, 30) for _ in range(2000)]
    specials = LLAMA3_SPECIALS if kind == "llama3" else SPECIALS
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return tok


def write_tokenizer(tok, directory):
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "bos_token": None}, f)


def tiny_hf(kind, directory, tie=False, max_len=128):
    """A random tiny Llama, Qwen2 or Mistral written by transformers' save_pretrained, with a tokenizers-trained BPE."""
    tok = train_bpe("qwen2")
    common = dict(vocab_size=tok.get_vocab_size() + 5, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_len,
                  tie_word_embeddings=tie, rope_theta=500000.0)
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, rms_norm_eps=1e-5, head_dim=32)   # head_dim != hidden / heads
        net = transformers.LlamaForCausalLM(config)
    elif kind == "llama3.1":                    # Llama 3.1's scaled RoPE, with a short original context so it bites
        rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=32)
        config = transformers.LlamaConfig(**{**common, "rope_theta": None}, rms_norm_eps=1e-5, rope_parameters=rope)
        net = transformers.LlamaForCausalLM(config)
    elif kind == "mistral":
        config = transformers.MistralConfig(**common, rms_norm_eps=1e-5, sliding_window=64)
        net = transformers.MistralForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common, rms_norm_eps=1e-6)
        net = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():                          # random norms and biases, so a mixed-up weight shows
        for name, p in net.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    net.eval().save_pretrained(directory)
    write_tokenizer(tok, directory)
    return net


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "llama3.1"])
def pair(request, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp(request.param))
    theirs = tiny_hf(request.param, directory, tie=request.param == "qwen2")
    ours, enc = hf.load_hf(directory)
    return request.param, directory, theirs, ours, enc


def random_prompts(vocab, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(3, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@torch.no_grad()
def test_logits_match_transformers(pair):
    kind, _, theirs, ours, _ = pair
    assert ours.config.qkv_bias == (kind == "qwen2") and ours.config.tie_embeddings == (kind == "qwen2")
    for p in random_prompts(ours.config.vocab_size):
        x = torch.tensor([p])
        assert torch.allclose(ours(x), theirs(x).logits, atol=1e-4, rtol=0), kind


@torch.no_grad()
def test_greedy_generation_matches_transformers(pair):
    _, _, theirs, ours, _ = pair
    prompts = random_prompts(ours.config.vocab_size, seed=1)
    out = generate.generate(ours, prompts, generate.SamplingOptions(24, eos_id=-1, temperature=0.0))   # left-padded
    for p, row in zip(prompts, out.tokens.tolist()):
        ref = theirs.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        assert row == ref[0, len(p):].tolist()


@torch.no_grad()
def test_round_trip_load_save_transformers(pair, tmp_path):
    kind, directory, theirs, ours, enc = pair
    hf.save_hf(ours, enc, str(tmp_path))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    for p in random_prompts(ours.config.vocab_size, seed=2):
        assert torch.allclose(back(torch.tensor([p])).logits, theirs(torch.tensor([p])).logits, atol=1e-5, rtol=0)
    fast = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Mia bought 12 apples, café 😀 <|im_end|>"
    assert fast(text, add_special_tokens=False)["input_ids"] == enc.encode(text, allowed_special="all")
    again, enc2 = hf.load_hf(str(tmp_path))
    assert enc2.roles == enc.roles and enc2.chat == enc.chat == "chatml"


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_tokenizer_conversion_matches_tokenizers(kind, tmp_path):
    tok = train_bpe(kind)
    write_tokenizer(tok, str(tmp_path))
    enc = hf.load_hf_tokenizer(str(tmp_path))
    assert enc.nfc == (kind == "qwen2")
    rng = random.Random(1)
    texts = [random_text(rng, rng.randint(0, 25)) for _ in range(1200)]
    texts += ["", " ", "\n\n\n", "x  \n y", "e\u0301" * 3, "12345678", "'S'll", "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        ids = enc.encode(text, allowed_special="all")
        assert ids == tok.encode(text, add_special_tokens=False).ids, repr(text)
        if kind == "gpt2":                           # NFC changes the text, so only the plain one decodes back
            assert enc.decode(ids) == text


def test_chat_tokens_chatml(tmp_path):
    tok = train_bpe("qwen2")
    write_tokenizer(tok, str(tmp_path))
    enc = hf.load_hf_tokenizer(str(tmp_path))
    messages = [{"role": "system", "content": "Plan."}, {"role": "user", "content": "Problem: 3 <|im_end|> 4"}]
    ids = enc.chat_tokens(messages)
    rendered = "<|im_start|>system\nPlan.<|im_end|>\n<|im_start|>user\nProblem: 3 <|im_end|> 4<|im_end|>\n" \
               "<|im_start|>assistant\n"
    assert enc.decode(ids) == rendered
    assert ids.count(enc.encode_single_token("<|im_end|>")) == 2        # the one inside the message stays text
    assert enc.encode_single_token("<|eos|>") == enc.encode_single_token("<|im_end|>")


# Llama 3's chat template, and Llama 3.1's without its tool-calling branches (the recipe sends no tools)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


@pytest.mark.parametrize("chat, where", [("llama3", "tokenizer_config.json"), ("llama3.1", "tokenizer_config.json"),
                                         ("llama3.1", "chat_template.jinja")])
def test_chat_tokens_llama3_match_transformers(chat, where, tmp_path):
    train_bpe("llama3").save(str(tmp_path / "tokenizer.json"))
    template = LLAMA31_TEMPLATE if chat == "llama3.1" else LLAMA3_TEMPLATE
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    if where == "chat_template.jinja":
        (tmp_path / where).write_text(template)
    else:
        config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    enc = hf.load_hf_tokenizer(str(tmp_path))
    fast = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert enc.chat == chat and enc.encode_single_token("<|eos|>") == enc.encode_single_token("<|eot_id|>")
    user = {"role": "user", "content": " Problem: Mia bought 12 apples, café 😀\n\n"}
    for messages in ([{"role": "system", "content": "Plan.  "}, user], [user],
                     [user, {"role": "assistant", "content": "<strategy>1. Add.</strategy>"}, user]):
        ids = fast.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert enc.chat_tokens(messages) == list(ids), messages
    assert ("Today Date: 26 Jul 2024" in enc.decode(enc.chat_tokens([user]))) == (chat == "llama3.1")


@torch.no_grad()
def test_save_hf_from_scratch_guide(tmp_path):
    ranks = tokenizer.train_tokenizer([random_text(random.Random(2), 40) for _ in range(300)], 400)
    tokenizer.save_tokenizer(ranks, str(tmp_path / "tok.tiktoken"))
    enc = tokenizer.load_tokenizer(str(tmp_path / "tok.tiktoken"))
    torch.manual_seed(0)
    ours = M.Guide(M.GuideConfig(vocab_size=enc.n_vocab, n_layer=2, n_embd=32, n_head=4, n_kv_head=2,
                                 max_seq_len=64)).eval()
    out = str(tmp_path / "hf")
    hf.save_hf(ours, enc, out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    for p in random_prompts(enc.n_vocab, seed=3):
        assert torch.allclose(ours(torch.tensor([p])), theirs(torch.tensor([p])).logits, atol=1e-4, rtol=0)
    fast = transformers.AutoTokenizer.from_pretrained(out)
    rng = random.Random(3)
    for text in [random_text(rng, rng.randint(0, 20)) for _ in range(300)]:
        assert fast(text, add_special_tokens=False)["input_ids"] == enc.encode_ordinary(text), repr(text)
    assert fast.eos_token == "<|eos|>" and fast.pad_token == "<|pad|>"


def malformed(tmp_path, what):
    d = tmp_path / what
    tiny_hf("llama", str(d))
    if what == "no-config":
        os.remove(d / "config.json")
    elif what == "missing-shard":
        os.remove(d / "model.safetensors")
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    elif what == "unknown-arch":
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
    elif what == "sentencepiece":
        os.remove(d / "tokenizer.json")
        (d / "tokenizer.model").write_bytes(b"\x0a\x00")
    return str(d)


@pytest.mark.parametrize("what, message", [
    ("no-config", r"config\.json: missing"), ("missing-shard", r"shard model-00001-of-00002\.safetensors is missing"),
    ("unknown-arch", r"unsupported architecture 'GPTNeoXForCausalLM'"), ("sentencepiece", r"SentencePiece-only")])
def test_malformed_directories_fail_with_one_line(tmp_path, what, message):
    d = malformed(tmp_path, what)
    with pytest.raises(hf.HFError, match=message) as e:
        hf.load_hf(d)
    assert "\n" not in str(e.value)
    # what a user types (the check): one line on stderr, exit status 1
    proc = subprocess.run([sys.executable, "hf.py", d], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert str(e.value) in proc.stderr


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_hf("llama", str(d))
    return d


def _copy(tiny_llama, tmp_path):
    import shutil
    return shutil.copytree(tiny_llama, tmp_path / "m")


def _edit_config(d, **fields):
    config = json.loads((d / "config.json").read_text())
    config.update(fields)
    (d / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("fields, message", [
    ({"vocab_size": 300_000_000}, r"config\.json: vocab_size must be an integer in \[1, 2097152\], got 300000000"),
    ({"vocab_size": 8_000_000}, r"config\.json: vocab_size must be an integer"),
    ({"hidden_size": 10 ** 12}, r"config\.json: hidden_size must be an integer"),
    ({"num_attention_heads": 0}, r"config\.json: num_attention_heads must be an integer in \[1, 1024\], got 0"),
    ({"num_hidden_layers": -3}, r"config\.json: num_hidden_layers must be an integer in \[1, 1024\], got -3"),
    ({"num_hidden_layers": 2.0}, r"config\.json: num_hidden_layers must be an integer"),
    ({"num_key_value_heads": True}, r"config\.json: num_key_value_heads must be an integer"),
    ({"num_key_value_heads": 3}, r"config\.json: num_attention_heads 4 must be a multiple of num_key_value_heads 3"),
    ({"rope_scaling": [1, 2], "rope_parameters": None}, r"config\.json: rope_scaling must be an object, got list"),
    ({"rope_parameters": ["default"]}, r"config\.json: rope_parameters must be an object, got list"),
    ({"architectures": {"a": 1}}, r"config\.json: architectures must be a list, got dict"),
    ({"tie_word_embeddings": "yes"}, r"config\.json: tie_word_embeddings must be bool, got str"),
    ({"rms_norm_eps": -1}, r"config\.json: rms_norm_eps must be a positive number"),
    ({"hidden_size": None}, r"config\.json: missing field 'hidden_size'")])
def test_absurd_or_malformed_config_fields_fail_with_one_line_before_any_tensor(tiny_llama, tmp_path, fields,
                                                                                message):
    d = _copy(tiny_llama, tmp_path)
    _edit_config(d, **fields)
    with pytest.raises(hf.HFError, match=message) as e:
        hf.load_hf(str(d))
    assert "\n" not in str(e.value)


def test_a_config_that_is_a_list_fails_with_one_line(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path)
    (d / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(hf.HFError, match=r"config\.json: must be a JSON object, got list"):
        hf.load_hf(str(d))


def test_integer_weights_are_refused_before_they_are_read(tmp_path):
    from safetensors.torch import load_file, save_file
    d = tmp_path / "m"
    tiny_hf("llama", str(d))
    weights = load_file(str(d / "model.safetensors"))
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"].to(torch.int64)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(hf.HFError, match=r"model\.safetensors: tensor model\.layers\.0\.mlp\.up_proj\.weight is I64, "
                                         r"not a floating-point type"):
        hf.load_hf(str(d))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", 7])
def test_shard_paths_stay_inside_the_model_directory(tiny_llama, tmp_path, shard):
    d = _copy(tiny_llama, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    os.remove(d / "model.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": shard}}))
    with pytest.raises(hf.HFError, match=r"index\.json: shard .* is not a file name inside the model directory"):
        hf.load_hf(str(d))


def test_an_index_without_a_weight_map_object_fails_with_one_line(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path)
    os.remove(d / "model.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    with pytest.raises(hf.HFError, match=r"index\.json: no weight_map object"):
        hf.load_hf(str(d))
