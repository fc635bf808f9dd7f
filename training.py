"""What SFT and GRPO share around their steps: seeding, start or resume, the optimizer, and the validation that
chooses the checkpoint kept.

1. Seeds: torch's and Python's RNGs are seeded from the stage's seed, so every RNG state a checkpoint saves is a
   function of the run, not of the process that wrote it, and a resumed run continues exactly.
2. A stage starts from its newest complete checkpoint directory (checkpoint.resume_training) or fresh, and is done
   when that checkpoint has reached its steps.
3. Every eval_every steps: the guide's greedy strategies for val tasks go to the live core, and the share it
   answers correctly is the checkpoint's score (measured as the test split is); the checkpoint is saved, and the
   best so far is the one kept. The oracle plan scores are logged for the curves and never choose anything.
"""
import datetime
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import checkpoint
import core_client
import evaluate
import execute
import hf
import run_dir


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# data parallelism: `torchrun --nproc_per_node N exectune.py sft|grpo ...`

def rank_and_world():
    """(this process's rank, the number of processes): torchrun's, or (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def start_distributed(device):
    """Join torchrun's process group when there is more than one process (gloo on CPU, NCCL on CUDA); returns the
    device this process trains on (on CUDA, the GPU of its local rank)."""
    if rank_and_world()[1] == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    return device


def data_parallel(guide):
    """The module a training step runs: guide itself, or guide in DistributedDataParallel, which averages the gradients
    of all processes in the backward pass (each process's loss is scaled by the number of processes, so the average
    is the gradient of the whole step's loss)."""
    if rank_and_world()[1] == 1:
        return guide
    device = guide.tok_emb.weight.device
    return DistributedDataParallel(guide, device_ids=[device] if device.type == "cuda" else None)


def peak_memory(device):
    """{"peak_memory_mb": ...} of the GPU so far, for a metrics line; {} on the CPU."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20)}


class StoppedByTorchrun(Exception):
    """SIGTERM under torchrun: another process of the run failed, and torchrun is stopping the rest."""


def stopped_by_torchrun(signum, frame):
    raise StoppedByTorchrun("torchrun sent SIGTERM")


def lost_a_process(error):
    """Whether an exception under torchrun says that another process of the run is gone: torchrun's SIGTERM, or a
    collective whose peer closed its connection (gloo and NCCL report it as a RuntimeError)."""
    if isinstance(error, StoppedByTorchrun):
        return True
    transport = isinstance(error, dist.DistError) or any(w in str(error) for w in ("gloo", "NCCL", "Connection"))
    return rank_and_world()[1] > 1 and isinstance(error, RuntimeError) and transport


def gather(items):
    """A list concatenated over every process of the run, in rank order (the list itself without torchrun)."""
    world = rank_and_world()[1]
    if world == 1:
        return list(items)
    parts = [None] * world
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def sum_over_processes(value, device):
    """A number summed over every process of the run (the number itself without torchrun)."""
    if rank_and_world()[1] == 1:
        return value
    total = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item()


def resume_or_start(what, out_dir, steps, device, fresh):
    """What SFT and GRPO train from: (guide, optimizer state or None, state) of the newest complete checkpoint in
    out_dir (checkpoint.resume_training), else fresh() with no optimizer state; None when that checkpoint already
    reached `steps`, so the stage is done."""
    try:
        resumed = checkpoint.resume_training(out_dir, device, load_model=run_dir.read_guide,
                                             settle=rank_and_world()[0] == 0)   # one writer under torchrun
    except (checkpoint.CheckpointError, hf.HFError) as e:
        raise run_dir.UserError(str(e))
    if resumed is None:
        guide, state = fresh()
        return guide, None, state
    step = resumed[2]["step"]
    if step >= steps:
        print(f"{what}: {out_dir} finished ({step} steps), kept")
        return None
    print(f"{what}: resuming {out_dir} from step {step}")
    return resumed


def make_optimizer(guide, lr, weight_decay, state=None):
    """AdamW with betas (0.9, 0.95); no weight decay on norms and biases (1-D parameters); `state`: a resumed
    optimizer's."""
    decay = [p for p in guide.parameters() if p.dim() >= 2]
    no_decay = [p for p in guide.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)], lr=lr, betas=(0.9, 0.95))
    if state:
        optimizer.load_state_dict(state)
    return optimizer


def val_accuracy(client, guide, tok, val_tasks, max_new_tokens):
    """(accuracy of the core with the guide's greedy strategies on val tasks, the strategies)."""
    texts, _ = evaluate.guide_strategies(guide, tok, val_tasks, max_new_tokens, 64, desc="val")
    _, verdicts = execute.run_strategies(client, val_tasks, texts, "val core")
    ok = [v for v in verdicts if v is not None]
    return sum(ok) / max(1, len(ok)), texts


@dataclass
class Validation:
    """How a stage chooses the checkpoint it keeps (the module docstring, 3): the run and the stage's name and
    directory, the core and the val tasks it answers, the guide's tokenizer and the run's strategy budget."""
    run: run_dir.Run
    name: str
    out_dir: str
    client: core_client.CoreClient
    val_tasks: list
    tok: object                 # tiktoken.Encoding, or hf.HFTokenizer for a pretrained guide
    max_new_tokens: int

    def __call__(self, guide, optimizer, state, step, **logged):
        """Score the guide at `step`, save its checkpoint, log one metrics line with `logged`; returns (val
        accuracy, exact-plan share, mean exact success), the last two None without an oracle."""
        accuracy, texts = val_accuracy(self.client, guide, self.tok, self.val_tasks, self.max_new_tokens)
        plan_exact, exact_success = evaluate.plan_scores(self.val_tasks, texts)
        state["step"] = step
        if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
            state.update(best_step=step, best_accuracy=accuracy)
        checkpoint.save_training(self.out_dir, guide, optimizer, state, save_model=run_dir.guide_saver(self.tok))
        self.run.log(self.name, step=step, **logged, val_accuracy=round(accuracy, 4),
                     best_val_accuracy=round(state["best_accuracy"], 4), val_plan_exact=run_dir.rounded(plan_exact),
                     val_exact_success=run_dir.rounded(exact_success),
                     val_executability=run_dir.rounded(evaluate.executability(self.val_tasks, texts)))   # an oracle
        return accuracy, plan_exact, exact_success
