"""ExecTune, the recipe: every stage of the paper's pipeline as a subcommand over one run directory.

This file is the command line and the first three stages; each later stage is a file of its own.

  1. data       seeded train / val / test / ood tasks of an offline world, or a real benchmark's files
                (families.py: mathsim, codesim, gsm8k, kodcode, humaneval).
  2. tokenizer  the guide's byte-level BPE, trained on the training text.
  3. baselines  the cheap core alone and the large core alone on test (two table rows), and R core-alone runs of
                every training task: the harm term of the reward needs "does the core usually solve this alone?".
  4. sample     (sample.py) teacher-guided acceptance sampling: K teacher strategies per training task, each run M
                times by the cheap core; accepted when valid, leak-free and all M runs are correct (--renamings R:
                also carried over to R copies of its problem with new numbers and accepted again there).
                accepted.jsonl keeps every distinct accepted strategy (ExecTune's data), raw.jsonl every teacher
                strategy (supervised GCoP's).
  5. sft        (sft.py) supervised fine-tuning of a fresh guide on accepted or raw strategies, with a language-
                modelling loss on the problem text; the checkpoint kept is the one with which the core is most
                accurate on val (training.py).
  6. grpo       (grpo.py) structure-aware GRPO against the live core, or the outcome-only advisor baseline.
  7. eval       (evaluate.py) one system (a guide checkpoint, the teacher, or no guide) with one core on the test
                split: a row of results.json and results.md; `table` prints them.

Every stage reads and writes inside runs/<name>/, can be re-run alone, and resumes instead of redoing finished
work: a stage whose outputs exist is skipped; sample, sft and grpo pick up where a killed run stopped (sample from
its last complete chunk file, sft and grpo from their newest complete checkpoint directory, checkpoint.save_training),
and finish with what an uninterrupted run gives. Every file is written atomically (checkpoint.atomic_write). A run
directory remembers each stage's configuration and refuses to mix in another one; a bad flag value stops a stage
before it writes anything (one line, exit 2); config.py says how a stage is configured, run_dir.py what a run
directory holds, execute.py how the cores and the teacher are called.

Each task is prompted and graded by its own family's rules (families.py); a code reply is graded by running its code
with the task's tests in the sandbox. The real path: `data --family gsm8k|kodcode|humaneval` reads a benchmark's
files from --data-dir, and `sft|grpo --init hf:<dir>` fine-tunes a pretrained Hugging Face guide (hf.py) instead of
training one; there is no tokenizer stage then, and every checkpoint of that guide is written as a Hugging Face
directory with its tokenizer, so it can be served as is.

Where this departs from the paper: by default the guide is a tiny decoder trained from scratch (the paper fine-tunes
pretrained LLMs), on level-1 mathsim, so that it learns to read within a 2-core CPU budget (`bash train.sh`:
about 80 minutes end to end), helped by the language-modelling loss on problem text (a pretrained guide trains on
strategies alone); SFT and GRPO keep the checkpoint with which the core is most accurate on val (GRPO's candidates
include the SFT checkpoint it starts from); the learning curves also log oracle measures (the loss on canonical
strategies of val tasks, the exact-plan rate, the simulator's exact success probability and the executability of
the verbs) that never feed training or choice.
"""
import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, asdict
from typing import ClassVar

import torch

import config
import evaluate
import execute
import families
import grpo
import mathsim
import run_dir
import sample
import sft
import tokenizer
import training
from config import at_least
from core_client import CoreError
from run_dir import UserError


# ----------------------------------------------------------------------------------------------------------------
# the first three stages' configurations (each later stage's is beside its code: sample.py, sft.py, grpo.py,
# evaluate.py; config.py says how a preset and the flags change them)

@dataclass
class DataConfig:
    stage: ClassVar[str] = "data"
    family: str = "mathsim"
    level: int = 1               # 1: 1-3 operations in computation order (CPU); 2: 2-6, shuffled facts
    n_train: int = 8000
    n_val: int = 200
    n_test: int = 500            # the table's accuracy: drawn like train
    n_ood: int = 500             # the table's "held-out phrasings" column
    seed: int = 0

    def __post_init__(self):
        if self.family not in families.FAMILIES:
            raise ValueError(f"--family {self.family!r} is not a task family (available: "
                             f"{', '.join(families.FAMILIES)})")
        if self.level not in mathsim.LEVELS:
            raise ValueError(f"--level must be one of {', '.join(map(str, mathsim.LEVELS))}, got {self.level}")
        at_least(self, 1, "n_train", "n_val", "n_test", "n_ood")
        at_least(self, 0, "seed")


@dataclass
class TokenizerConfig:
    stage: ClassVar[str] = "tokenizer"
    vocab_size: int = 2048

    def __post_init__(self):
        at_least(self, 256 + len(tokenizer.SPECIAL_TOKENS), "vocab_size")   # every byte, and the special tokens


@dataclass
class BaselineConfig:
    stage: ClassVar[str] = "baselines"
    alone_runs: int = 3          # R core-alone runs per training task (majority decides "the core solves it alone")

    def __post_init__(self):
        at_least(self, 1, "alone_runs")


# ----------------------------------------------------------------------------------------------------------------
# 1. data

def stage_data(args, run):
    cfg = config.stage_config(DataConfig, args)
    family = families.get(cfg.family)
    if family.generate is None:                 # a real benchmark, read from its files
        return stage_data_files(args, run, cfg, family)
    run.check_config("data", cfg)
    os.makedirs(run.file("data"), exist_ok=True)
    sizes = dict(train=cfg.n_train, val=cfg.n_val, test=cfg.n_test, ood=cfg.n_ood)
    for i, split in enumerate(mathsim.SPLITS):
        path = run.file("data", f"{split}.jsonl")
        if os.path.exists(path):
            print(f"data: {path} exists, kept")
            continue
        rows = [t.to_json() for t in family.generate(sizes[split], cfg.seed * 1000 + i, split, cfg.level)]
        run_dir.write_jsonl(path, rows)
        print(f"data: {len(rows)} {split} tasks -> {path}")
    run.log("data", **asdict(cfg))


def stage_data_files(args, run, cfg, family):
    """A real benchmark's files from --data-dir, copied into the run: the first n_train / n_test problems (at most),
    n_val carved from the training problems with the seed (families.Family.load says how). No level and no ood
    split: those belong to the offline worlds."""
    data_dir = args.data_dir or family.data_dir
    try:
        splits = family.load(data_dir, cfg.n_val, cfg.n_test, cfg.seed)   # read first: a bad directory writes nothing
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e))
    run.check_config("data", dict(asdict(cfg), data_dir=os.path.abspath(data_dir)))
    os.makedirs(run.file("data"), exist_ok=True)
    for split, n in [("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)]:
        path = run.file("data", f"{split}.jsonl")
        if os.path.exists(path):
            print(f"data: {path} exists, kept")
            continue
        run_dir.write_jsonl(path, [t.to_json() for t in splits[split][:n]])
        print(f"data: {min(n, len(splits[split]))} {family.name} {split} problems -> {path}")
    run.log("data", **asdict(cfg), data_dir=data_dir)


# ----------------------------------------------------------------------------------------------------------------
# 2. tokenizer

def training_text(train_tasks):
    """What the guide reads and writes (families.Family.tokenizer_text): in an offline world, the prompts and the
    strategy grammar's own words (every verb form, "the result of step k"); never a task's canonical strategy."""
    for t in train_tasks:
        yield from families.family_of(t).tokenizer_text(t)


def stage_tokenizer(args, run):
    cfg = config.stage_config(TokenizerConfig, args)
    run.check_config("tokenizer", cfg)
    path = run.file("tokenizer.tiktoken")
    if os.path.exists(path):
        print(f"tokenizer: {path} exists, kept")
        return
    t0 = time.time()
    ranks = tokenizer.train_tokenizer(list(training_text(run_dir.load_tasks(run, "train"))), cfg.vocab_size)
    tokenizer.save_tokenizer(ranks, path)
    run.log("tokenizer", vocab_size=len(ranks), seconds=round(time.time() - t0, 2))
    print(f"tokenizer: {len(ranks)} tokens in {time.time() - t0:.1f}s -> {path}")


# ----------------------------------------------------------------------------------------------------------------
# 3. baselines

def stage_baselines(args, run):
    cfg = config.stage_config(BaselineConfig, args)
    run.check_config("baselines", cfg)
    endpoints, eval_cfg = execute.Endpoints.from_args(args), config.stage_config(evaluate.EvalConfig, args)
    evaluate.eval_system(run, endpoints, eval_cfg, "core alone", guide="none", role="core")
    evaluate.eval_system(run, endpoints, eval_cfg, "large core alone", guide="none", role="large")
    path = run_dir.alone_stats_path(run)
    if os.path.exists(path):
        print(f"baselines: {path} exists, kept")
        return
    train = run_dir.load_tasks(run, "train")
    client = execute.client_for(endpoints, "core", run)
    out, verdicts = execute.run_strategies(client, [t for t in train for _ in range(cfg.alone_runs)],
                                    [None] * (len(train) * cfg.alone_runs), "core alone on train",
                                    draws=[d for _ in train for d in range(cfg.alone_runs)])
    rows = []
    for i, t in enumerate(train):
        span = range(i * cfg.alone_runs, (i + 1) * cfg.alone_runs)
        runs = [out[j] for j in span if not isinstance(out[j], CoreError)]
        correct = [verdicts[j] for j in span if not isinstance(out[j], CoreError)]
        dollars = [d for d in (client.dollars(r) for r in runs) if d is not None]
        rows.append(dict(id=t.id, runs=len(runs), correct=sum(correct),
                         majority_correct=bool(runs) and 2 * sum(correct) > len(runs),
                         dollars=sum(dollars) / len(dollars) if dollars else None))
    run_dir.write_jsonl(path, rows)
    solved = sum(r["majority_correct"] for r in rows) / max(1, len(rows))
    run.log("baselines", train_tasks=len(rows), alone_majority_correct=round(solved, 4), **client.stats())
    print(f"baselines: core alone solves {solved:.1%} of training tasks by majority of {cfg.alone_runs} runs")


def stage_eval(args, run):
    if args.guide not in ("none", "teacher"):
        run_dir.load_guide(run, args.guide)  # fail early with a clear line on a bad path
    if args.family:                  # evaluate on this family: a run without data gets the data stage's first
        made = run.recorded("data")
        if made is None:
            stage_data(args, run)
        elif made["family"] != args.family:
            raise UserError(f"{run.path} holds {made['family']} tasks, not {args.family}; use another --run")
    decodes = args.guide not in ("none", "teacher")
    evaluate.eval_system(run, execute.Endpoints.from_args(args), config.stage_config(evaluate.EvalConfig, args),
                         args.name or args.guide, args.guide, role=args.core_role,
                         budget=evaluate.strategy_budget(args, run) if decodes else None, device=args.device)


# ----------------------------------------------------------------------------------------------------------------
# command line

STAGES = {  # name: (function, its config dataclasses, what it does in a few words for --help)
    "data": (stage_data, [DataConfig], "write seeded train / val / test tasks, or read GSM8K's"),
    "tokenizer": (stage_tokenizer, [TokenizerConfig], "train the guide's byte-level BPE on the training text"),
    "baselines": (stage_baselines, [BaselineConfig], "the cores alone on test, and core-alone runs of train"),
    "sample": (sample.stage_sample, [sample.SampleConfig], "teacher strategies run by the core; keep the accepted "
                                                           "ones"),
    "sft": (sft.stage_sft, [sft.SFTConfig, evaluate.DecodeConfig],
            "train a fresh guide (or fine-tune a pretrained one) on accepted (or raw) teacher strategies"),
    "grpo": (grpo.stage_grpo, [grpo.GRPOConfig, evaluate.DecodeConfig], "RL of an SFT guide against the live core"),
    "eval": (stage_eval, [evaluate.EvalConfig, evaluate.DecodeConfig, DataConfig],
             "one system on the test split: a row of the results table (with --family, a run without data gets the "
             "data stage's first)"),
    "table": (evaluate.stage_table, [], "print results.md and a one-line JSON summary"),
}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A bad flag: one line and exit 2 (argparse's usage block would bury the line that matters)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    env = os.environ.get
    p = Parser(description=__doc__.split("\n")[0],   # the docstring's first line: one whole sentence
                                epilog="bash train.sh runs the stages in this order; `exectune.py STAGE --help` "
                                       "lists a stage's flags.")
    sub = p.add_subparsers(dest="stage", required=True)
    p.stage_parsers = {}
    for name, (_, configs, what) in STAGES.items():
        s = p.stage_parsers[name] = sub.add_parser(name, help=what, description=what)
        s.add_argument("--run", default=env("RUN", "runs/default"), help="run directory (default runs/default)")
        s.add_argument("--preset", default=env("PRESET") or None,
                       help=f"sizes for another budget: {', '.join(config.PRESETS)} (env PRESET, which train.sh sets)")
        s.add_argument("--core-url", default=env("CORE_URL"), help="core base URL (env CORE_URL)")
        s.add_argument("--core-model", default=env("CORE_MODEL", "sim-core"))
        s.add_argument("--core-api", default=env("CORE_API", "openai"), choices=["openai", "anthropic"])
        s.add_argument("--large-core-model", default=env("LARGE_CORE_MODEL", "sim-core-large"))
        s.add_argument("--teacher-url", default=env("TEACHER_URL"), help="defaults to the core URL")
        s.add_argument("--teacher-model", default=env("TEACHER_MODEL", "sim-teacher"))
        s.add_argument("--teacher-api", default=env("TEACHER_API"), choices=["openai", "anthropic"])
        s.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
        s.add_argument("--max-retries", type=int, default=6, help="retries of a failing request")
        s.add_argument("--device", default=env("DEVICE", "cpu"), help="where the guide runs: cpu, cuda, cuda:1 "
                       "(env DEVICE; on CUDA, bf16 autocast)")
        s.add_argument("--core-temperature", type=float, default=1.0)
        s.add_argument("--core-max-tokens", type=int, default=512)
        for cls in configs:
            config.add_config_flags(s, cls)
        if name in ("data", "eval"):
            s.add_argument("--data-dir", default=env("DATA_DIR"),
                           help="where a real benchmark's files are (env DATA_DIR; default data/gsm8k for gsm8k, "
                                "data/kodcode for kodcode and humaneval)")
        if name == "sft":
            s.add_argument("--data", choices=["accepted", "raw"], default="accepted")
            s.add_argument("--init", help="hf:<dir>: fine-tune a pretrained Hugging Face guide (its tokenizer too) "
                                          "instead of training one from scratch")
        if name == "grpo":
            s.add_argument("--init", required=True, help="checkpoint to start from, e.g. sft-accepted/best, or "
                                                         "hf:<dir> for a Hugging Face directory")
        if name in ("sft", "grpo"):
            s.add_argument("--grad-checkpointing", action="store_true",
                           help="recompute activations in the backward pass (less memory, more compute)")
        if name == "eval":
            s.add_argument("--guide", required=True, help="checkpoint dir (relative to the run), hf:<dir>, "
                                                          "'teacher' or 'none'")
            s.add_argument("--core-role", choices=["core", "large"], default="core")
            s.add_argument("--name", help="row name in the results table")
        if name == "table":
            s.add_argument("--wall-s", type=int, help="wall time of the run, for the summary line")
    return p


def check_device(name):
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device / DEVICE {name!r} is not a device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device / DEVICE {name!r}, but this torch sees no CUDA GPU (use cpu)")
    return device


def check_flags(parser, args):
    """Every flag of the stage, before anything is written: the first bad one ends the command (one line, exit 2)."""
    problems = [(args.concurrency < 1, f"--concurrency must be >= 1, got {args.concurrency}"),
                (args.max_retries < 0, f"--max-retries must be >= 0, got {args.max_retries}"),
                (args.core_max_tokens < 1, f"--core-max-tokens must be >= 1, got {args.core_max_tokens}"),
                (args.core_temperature < 0, f"--core-temperature must be >= 0, got {args.core_temperature}"),
                (args.preset is not None and args.preset not in config.PRESETS,
                 f"--preset / PRESET {args.preset!r} is not one of {', '.join(config.PRESETS)}")]
    for bad, message in problems:
        if bad:
            parser.error(message)
    try:
        args.device = check_device(args.device)
        for cls in STAGES[args.stage][1]:
            config.stage_config(cls, args)
    except (UserError, ValueError) as e:
        parser.error(str(e))
    message = inert_flag(args)
    if message:
        parser.error(message)


def inert_flag(args):
    """A flag the user set that would change nothing with the others given: what to say, else None."""
    def given(name):
        return getattr(args, name, None) is not None
    if args.stage == "sample" and given("select") and config.stage_config(sample.SampleConfig, args).keep == 0:
        return "--select orders the accepted strategies that --keep keeps; with --keep 0 every one is kept"
    if args.stage == "sft" and args.init:
        shaped = [name for name in sft.FRESH_GUIDE_FIELDS if given(name)]
        if shaped:
            return f"--{shaped[0].replace('_', '-')} shapes a fresh guide; --init {args.init} brings its own"
    if args.stage == "sft" and given("decline_targets") and args.decline_targets and args.data != "accepted":
        return "--decline-targets teaches declines beside accepted strategies (--data accepted); raw ones stay as drawn"
    if args.stage == "eval" and args.decline_gate and args.guide in ("none", "teacher"):
        return f"--decline-gate gates a trained guide by its own surprise; --guide {args.guide} is none"
    if args.stage == "grpo" and given("weights"):
        cfg, default = config.stage_config(grpo.GRPOConfig, args), grpo.RewardWeights()
        unused = [k for k, v in asdict(cfg.weights).items() if v != getattr(default, k) and k != "execution"]
        if cfg.reward == "outcome" and unused:
            return f"--weights {unused[0]}: the outcome reward scores the core's answer alone (execution)"
    return None


def writer_of(args):
    """The outputs a command writes, as the name of its lock: one writer each."""
    if args.stage == "sft":
        return f"sft-{args.data}"
    if args.stage == "grpo":
        return f"grpo-{config.stage_config(grpo.GRPOConfig, args).reward}"
    if args.stage == "eval":
        return "eval-" + run_dir.slug(args.name or args.guide)
    return args.stage


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser.stage_parsers[args.stage], args)
    # OMP_NUM_THREADS, when set, wins: train.sh gives each of two guides trained side by side one core
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, os.cpu_count() or 1))
    rank, world = training.rank_and_world()
    if world > 1 and args.stage not in ("sft", "grpo"):
        parser.stage_parsers[args.stage].error(f"only sft and grpo run under torchrun ({world} processes here)")
    if world > 1:      # torchrun stops the other processes with SIGTERM when one fails: say so in one line
        signal.signal(signal.SIGTERM, training.stopped_by_torchrun)
    try:
        run = run_dir.Run(args.run)
        args.device = training.start_distributed(args.device)
        with contextlib.ExitStack() as held:
            if args.stage != "table" and rank == 0:     # the one stage that only reads; under torchrun, the run's
                held.enter_context(run.writer(writer_of(args)))   # first process holds the lock for all of them
            STAGES[args.stage][0](args, run)
            if torch.distributed.is_initialized():
                torch.distributed.barrier()   # the others wait for rank 0's last save before the group goes
    except (UserError, CoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, training.StoppedByTorchrun) as e:
        if not training.lost_a_process(e):
            raise
        # another process of the run failed: a collective broke, or torchrun is stopping the rest
        print(f"error: rank {rank}: another process of this torchrun run stopped ({str(e).splitlines()[0][:200]}); "
              "run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    if training.rank_and_world()[1] > 1:
        # Under torchrun the group is destroyed and every file closed by now, yet gloo's C++ threads can still abort
        # the interpreter's own teardown (SIGABRT, "terminate called without an active exception"; about 1 exit in
        # 7 on a loaded 2-core machine), which would turn a finished run into a failed one: leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
