"""The CUDA path: bf16 autocast, the compiled decode step and a training step on a GPU. Skipped without one;
benchmarks/gpu_check.sh runs them (`pytest -m cuda`)."""
import pytest
import torch

import generate
import sft
from model import Guide, GuideConfig

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def guide():
    torch.manual_seed(0)
    return Guide(GuideConfig(vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=128)).cuda()


def prompts(n=6):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 512, (int(k),), generator=g).tolist() for k in torch.randint(3, 20, (n,), generator=g)]


def test_cached_decode_matches_the_reference_decode_on_cuda(guide):
    greedy = generate.SamplingOptions(max_new_tokens=24, eos_id=-1, temperature=0.0)
    fast = generate.generate(guide.eval(), prompts(), greedy)
    slow = generate.reference_generate(guide, prompts(), greedy)
    agree = (fast.tokens == slow.tokens).float().mean().item()
    assert agree > 0.95, agree        # bf16: a near tie may break the other way, not more


def test_compiled_decode_step_matches_eager_on_cuda(guide):
    greedy = generate.SamplingOptions(max_new_tokens=24, eos_id=-1, temperature=0.0)
    eager = generate.generate(guide.eval(), prompts(), greedy)
    compiled = generate.generate(guide, prompts(), greedy, compile_step=True)
    assert (eager.tokens == compiled.tokens).float().mean().item() > 0.95


def test_sampling_on_cuda_is_reproducible_and_stops_at_eos(guide):
    sampling = generate.SamplingOptions(max_new_tokens=32, eos_id=7, temperature=1.0)
    a = generate.generate(guide.eval(), prompts(), sampling, generator=torch.Generator("cuda").manual_seed(3))
    b = generate.generate(guide, prompts(), sampling, generator=torch.Generator("cuda").manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)
    for row, mask in zip(a.tokens.tolist(), a.mask.tolist()):
        if 7 in row:
            end = row.index(7)
            assert mask[:end + 1] == [True] * (end + 1) and not any(mask[end + 1:])   # EOS kept, nothing after


def test_a_training_step_on_cuda_lowers_the_loss(guide):
    examples = [(p, p[::-1] + [2]) for p in prompts(16)]
    inputs, targets, mask = (x.cuda() for x in sft.sft_batch(examples, pad_id=0))
    optimizer = torch.optim.AdamW(guide.parameters(), lr=3e-3)
    guide.train()
    losses = []
    for _ in range(30):
        loss = sft.sft_loss(guide, inputs, targets, mask, prompt_weight=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
