"""ExecTune, the recipe: every stage of the paper's pipeline as a subcommand over one run directory.

  1. data       seeded train / val / test / ood tasks of an offline world, or a real benchmark's files
                (families.py: mathsim, codesim, gsm8k, kodcode, humaneval).
  2. tokenizer  the guide's byte-level BPE, trained on the training text.
  3. baselines  the cheap core alone and the large core alone on test (two table rows), and R core-alone runs of
                every training task: the harm term of the reward needs "does the core usually solve this alone?".
  4. sample     teacher-guided acceptance sampling: K teacher strategies per training task, each executed M times by
                the cheap core; a strategy is accepted when it is valid, leaks no answer and all M runs are correct;
                every distinct accepted strategy of a task is kept (accepted.jsonl). raw.jsonl keeps every
                teacher strategy: the supervised-GCoP baseline trains on it.
  5. sft        supervised fine-tuning of a fresh guide on accepted (ExecTune init) or raw (baseline) strategies;
                loss on strategy tokens plus 0.5 x the language-modelling loss on the problem text (unlabeled
                text; it teaches the guide to find and copy the problem's phrases); AdamW, warmup + cosine, clipping,
                length-grouped batches,
                torch.compile; the best checkpoint is the one with which the core is most accurate on val.
  6. grpo       structure-aware GRPO against the live core (grpo.py), or the outcome-only advisor baseline.
  7. eval       one system (a guide checkpoint, the teacher, or no guide) with one core on the test split; appends
                a row to results.json and rewrites results.md.

Every stage reads and writes inside runs/<name>/, can be re-run alone, and resumes instead of redoing finished
work: a stage whose outputs exist is skipped; sample, sft and grpo pick up where a killed run stopped (sample from
its last complete chunk file, sft and grpo from their newest complete checkpoint directory, model.save_training),
and finish with what an uninterrupted run gives. Every file is written atomically (model.atomic_write). A run
directory remembers each stage's configuration and refuses to mix in another one; a bad flag value stops a stage
before it writes anything (one line, exit 2). Evaluation and the results table are in evaluate.py.

Each task is prompted and graded by its own family's rules (families.py); a code reply is graded by running its code
with the task's tests in the sandbox. The real path: `data --family gsm8k|kodcode|humaneval` reads a benchmark's
files from --data-dir, and `sft|grpo --init hf:<dir>` fine-tunes a pretrained Hugging Face guide (hf.py) instead of
training one; there is no tokenizer stage then, and every checkpoint of that guide is written as a Hugging Face
directory with its tokenizer, so it can be served as is.

Where this departs from the paper: by default the guide is a tiny decoder trained from scratch (the paper fine-tunes
pretrained LLMs), on level-1 mathsim, so that it learns to read within a 2-core CPU budget (about 52 minutes end
to end), helped by the language-modelling loss on problem text (a pretrained guide trains on strategies alone);
SFT and GRPO keep the checkpoint with which the core is most accurate on val (GRPO's candidates include the
SFT checkpoint it starts from); the learning curves also log oracle measures (the loss on canonical strategies of
val tasks, the exact-plan rate and the simulator's exact success probability) that never feed training or choice.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, asdict

import torch
from tqdm import tqdm

import evaluate
import grpo
import hf
import model as guide_model
import families
import tasks
from core_client import CoreClient, CoreError


class UserError(Exception):
    """A problem the user can fix; main() prints it as one line and exits 1."""


# ----------------------------------------------------------------------------------------------------------------
# stage configurations (one dataclass per stage; a preset resizes them for another budget). Each checks its values
# when it is made, so a bad flag stops the command before it writes anything.

def at_least(cfg, low, *names):
    """Raise ValueError, naming the flag, for the first of cfg's fields `names` that is below `low` (or, for a
    seed, above what the random generators take)."""
    for name in names:
        value = getattr(cfg, name)
        if not value >= low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if name == "seed" and value >= 2 ** 32:
            raise ValueError(f"--seed must be < 2**32, got {value}")


@dataclass
class DataConfig:
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
        if self.level not in tasks.LEVELS:
            raise ValueError(f"--level must be one of {', '.join(map(str, tasks.LEVELS))}, got {self.level}")
        at_least(self, 1, "n_train", "n_val", "n_test", "n_ood")
        at_least(self, 0, "seed")


@dataclass
class TokenizerConfig:
    vocab_size: int = 2048

    def __post_init__(self):
        at_least(self, 256 + len(guide_model.SPECIAL_TOKENS), "vocab_size")   # every byte, and the special tokens


@dataclass
class BaselineConfig:
    alone_runs: int = 3          # R core-alone runs per training task (majority decides "the core solves it alone")

    def __post_init__(self):
        at_least(self, 1, "alone_runs")


@dataclass
class SampleConfig:
    k: int = 8                   # teacher strategies per task
    m: int = 2                   # cheap-core executions per strategy; accept only when all are correct
    keep: int = 0                # accepted strategies kept per task, in `select` order; 0: every distinct one
    select: str = "cheapest"     # cheapest: fewest core dollars first; handles: fewest numbers looked up (so
                                 # most quantities named by the problem's own phrases) first, then cheapest
    name_quantities: bool = True  # ask the teacher to name quantities as the problem does (tasks.NAME_QUANTITIES)
    chunk: int = 500             # tasks per resumable chunk

    def __post_init__(self):
        at_least(self, 1, "k", "m", "chunk")
        at_least(self, 0, "keep")
        if self.select not in SELECT_RULES:
            raise ValueError(f"--select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")


@dataclass
class SFTConfig:
    steps: int = 6000
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    prompt_loss_weight: float = 0.5   # weight of the language-modelling loss on the problem text: predicting the
                                      # problem's own phrases teaches the guide to find and copy them, which is
                                      # what a plan needs (README, the reading levers: 2x fewer steps to a plan)
    compile: bool = True              # torch.compile the training forward/backward (1.2x on a 2-core CPU)
    seed: int = 0
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 2
    max_seq_len: int = 1024

    def __post_init__(self):
        at_least(self, 1, "steps", "batch_size", "eval_every", "n_layer", "n_embd", "n_head", "n_kv_head",
                 "max_seq_len")
        at_least(self, 0, "warmup", "weight_decay", "grad_clip", "prompt_loss_weight", "seed")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"need --lr > 0 and 0 <= --min-lr-ratio <= 1, got {self.lr} and {self.min_lr_ratio}")
        try:                                    # the guide's own shape rules
            guide_model.GuideConfig(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                                    n_kv_head=self.n_kv_head, max_seq_len=self.max_seq_len)
        except ValueError as e:
            raise ValueError(f"--n-embd / --n-head / --n-kv-head: {e}") from None


@dataclass
class GRPOStageConfig(grpo.GRPOConfig):
    """grpo.GRPOConfig (group size, clipping, KL, micro-batches...) plus what the stage adds around the steps."""
    lr: float = 1e-4
    max_new_tokens: int = 128
    steps: int = 100
    eval_every: int = 20         # greedy accuracy on val every this many steps; the best checkpoint is kept
    n_val_eval: int = 200
    seed: int = 0

    def __post_init__(self):
        at_least(self, 1, "prompts_per_step", "max_new_tokens", "update_passes", "micro_batch_size", "steps",
                 "eval_every", "n_val_eval")
        at_least(self, 2, "group_size")          # a group of one has no advantage to learn from
        at_least(self, 0, "clip_eps", "kl_beta", "grad_clip", "seed")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"need --lr > 0 and --temperature > 0, got {self.lr} and {self.temperature}")


@dataclass
class EvalConfig:
    max_new_tokens: int = 160
    batch_size: int = 64

    def __post_init__(self):
        at_least(self, 1, "max_new_tokens", "batch_size")


# Presets: sizes for other budgets, over the defaults above (bash train.sh picks one from QUICK, LEVEL, DEVICE, TASK).
PRESETS = {}
PRESETS["quick"] = {
    "data": dict(n_train=80, n_val=24, n_test=60, n_ood=30),
    "sample": dict(k=2, chunk=40),
    "sft": dict(steps=30, batch_size=8, eval_every=15, n_layer=2, n_embd=64, n_head=2, n_kv_head=1, compile=False),
    "grpo": dict(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=96, eval_every=3, n_val_eval=24),
    "eval": dict(max_new_tokens=96),
}
# level2 and codesim keep the sampling, SFT and GRPO settings their README results were measured with
_EARLIER_SAMPLE = dict(k=4, keep=1, name_quantities=False)
_EARLIER_SFT = dict(prompt_loss_weight=0.0)
_EARLIER_GRPO = dict(lr=2e-4, steps=40, eval_every=10)
PRESETS["level2"] = {        # LEVEL=2 on a CPU in under an hour: longer problems, so fewer tasks and SFT steps
    "data": dict(level=2, n_train=4000),
    "sample": _EARLIER_SAMPLE,
    "sft": dict(_EARLIER_SFT, steps=2000),
    "grpo": dict(_EARLIER_GRPO, steps=20),
}
PRESETS["codesim"] = {       # TASK=codesim: a clear wrong plan costs more than a right one gains, so the guide must be
    "sample": _EARLIER_SAMPLE,
    "sft": dict(_EARLIER_SFT, steps=5000),  # nearly always right: SFT runs longer (README, Code: the levers)
    "grpo": _EARLIER_GRPO,
}
PRESETS["cuda"] = {          # DEVICE=cuda: level 2, a larger guide and more steps for one modern GPU
    "data": dict(level=2, n_train=20000),
    "sft": dict(steps=6000, batch_size=64, lr=1e-3, warmup=200, eval_every=500, n_layer=8, n_embd=384, n_head=6,
                n_kv_head=2),
    "grpo": dict(steps=100, prompts_per_step=16, eval_every=20, n_val_eval=500),
    "eval": dict(batch_size=250),
}


def stage_config(cls, args):
    """A stage's dataclass: defaults, then the preset's sizes for that stage, then flags the user set explicitly
    (checked by the dataclass: a ValueError names the flag)."""
    stage = next(name for name, (_, configs, _) in STAGES.items() if configs[0] is cls)   # the stage it configures
    values = dict(PRESETS[args.preset].get(stage, {}) if args.preset else {})
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None)
                   is not None})
    return cls(**values)


def add_config_flags(parser, cls):
    for f in dataclasses.fields(cls):
        flag, kind = "--" + f.name.replace("_", "-"), type(f.default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default {f.default}")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"default {f.default}")


# ----------------------------------------------------------------------------------------------------------------
# run directory: files, configs, metrics

class Run:
    def __init__(self, path):
        if not path:
            raise UserError("--run must name a directory")
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot make the run directory {path}: {e.strerror}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"the run directory {path} is not writable")

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def check_config(self, stage, cfg):
        """Remember a stage's configuration; refuse to resume a stage that was started with another one. Stages may
        run at once (train.sh trains the two SFT guides side by side), so the read-modify-write holds a lock."""
        path = self.file("config.json")
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            configs = read_json(path) if os.path.exists(path) else {}
            cfg = asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
            old = configs.get(stage)
            if old is not None and old != cfg:
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in cfg.items() if old.get(k) != v)
                raise UserError(f"{self.path} was made with another {stage} configuration ({diff}); "
                                f"use another --run, or delete {path} entries and outputs to redo it")
            configs[stage] = cfg
            write_json(path, configs)

    @contextlib.contextmanager
    def writer(self, what):
        """Hold the run's lock for `what` (a stage's outputs) while it writes; a second process asking for the same
        one stops with a line naming the holder. Stages with other outputs (train.sh's two SFT guides) run at once."""
        os.makedirs(self.file("locks"), exist_ok=True)
        with open(self.file("locks", f"{what}.lock"), "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise UserError(f"{self.path}: {what} is being written by {holder}; wait for it, or use another --run")
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])})")
            lock.flush()
            yield

    def log(self, stage, **values):
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(json.dumps({"stage": stage, "time": round(time.time(), 3), **values}) + "\n")


def rounded(value, digits=4):
    return None if value is None else round(value, digits)


def write_json(path, obj):
    guide_model.atomic_write(path, json.dumps(obj, indent=2) + "\n")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file")
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}")


def write_jsonl(path, rows):
    guide_model.atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path, required=()):
    """Rows of a JSON-lines file; a malformed line or a missing field names the file and the line."""
    rows = []
    try:
        f = open(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (run the stage that writes it first)")
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg})")
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise UserError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def load_tasks(run, split):
    path = run.file("data", f"{split}.jsonl")
    rows = read_jsonl(path, required=("id",))      # the family's from_json checks the rest
    if not rows:
        raise UserError(f"{path} holds no tasks")
    try:
        return [families.get(r.get("family", "mathsim")).task_from_json(r) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: a task could not be read ({e})")


# ----------------------------------------------------------------------------------------------------------------
# cores and teacher

def client_for(args, role, run):
    """A CoreClient for role in core|large|teacher, all sharing the run's request cache."""
    url = args.teacher_url if role == "teacher" else args.core_url
    url = url or args.core_url
    if not url:
        raise UserError("no core configured: pass --core-url or set CORE_URL "
                        "(bash train.sh starts the local simulated core for you)")
    model = {"core": args.core_model, "large": args.large_core_model, "teacher": args.teacher_model}[role]
    api = args.teacher_api if role == "teacher" else args.core_api
    try:
        return CoreClient(url, model, api=api or args.core_api, concurrency=args.concurrency,
                          max_retries=args.max_retries, cache_path=run.file("cache.sqlite"))
    except ValueError as e:                     # a malformed URL or key: one line, the key never echoed
        raise UserError(f"{role}: {e}")


def run_requests(client, messages, what, draws=None, **params):
    """chat_many with failure accounting: a few failures after retries are counted and left out, but a stage
    in which most requests fail (wrong key, dead endpoint) stops with the first error."""
    draws = draws or [0] * len(messages)
    # one request first: a dead endpoint or a wrong key stops here with one clear line, before a thousand retries
    first = client.chat_many(messages[:1], draws=draws[:1], desc=what, **params)
    if first and isinstance(first[0], CoreError):
        raise UserError(f"{what}: {first[0]}")
    out = first + client.chat_many(messages[1:], draws=draws[1:], desc=what, **params)
    failures = [r for r in out if isinstance(r, CoreError)]
    if failures and (len(failures) > 0.2 * len(out) or len(failures) == len(out)):
        raise UserError(f"{what}: {len(failures)}/{len(out)} requests failed; first: {failures[0]}")
    if failures:
        print(f"warning: {what}: {len(failures)} requests failed after retries and are left out", file=sys.stderr)
    return out


def core_params(args):
    return dict(temperature=args.core_temperature, max_tokens=args.core_max_tokens)


# ----------------------------------------------------------------------------------------------------------------
# 1. data

def stage_data(args, run):
    cfg = stage_config(DataConfig, args)
    family = families.get(cfg.family)
    if family.generate is None:                 # a real benchmark, read from its files
        return stage_data_files(args, run, cfg, family)
    run.check_config("data", cfg)
    os.makedirs(run.file("data"), exist_ok=True)
    sizes = dict(train=cfg.n_train, val=cfg.n_val, test=cfg.n_test, ood=cfg.n_ood)
    for i, split in enumerate(tasks.SPLITS):
        path = run.file("data", f"{split}.jsonl")
        if os.path.exists(path):
            print(f"data: {path} exists, kept")
            continue
        rows = [t.to_json() for t in family.generate(sizes[split], cfg.seed * 1000 + i, split, cfg.level)]
        write_jsonl(path, rows)
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
        write_jsonl(path, [t.to_json() for t in splits[split][:n]])
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
    cfg = stage_config(TokenizerConfig, args)
    run.check_config("tokenizer", cfg)
    path = run.file("tokenizer.tiktoken")
    if os.path.exists(path):
        print(f"tokenizer: {path} exists, kept")
        return
    t0 = time.time()
    ranks = guide_model.train_tokenizer(list(training_text(load_tasks(run, "train"))), cfg.vocab_size)
    guide_model.save_tokenizer(ranks, path)
    run.log("tokenizer", vocab_size=len(ranks), seconds=round(time.time() - t0, 2))
    print(f"tokenizer: {len(ranks)} tokens in {time.time() - t0:.1f}s -> {path}")


def load_tokenizer(run):
    path = run.file("tokenizer.tiktoken")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file (run `exectune.py tokenizer` first)")
    return guide_model.load_tokenizer(path)


# ----------------------------------------------------------------------------------------------------------------
# 3. baselines

def alone_stats_path(run):
    return run.file("alone_train.jsonl")


def stage_baselines(args, run):
    cfg = stage_config(BaselineConfig, args)
    run.check_config("baselines", cfg)
    eval_system(args, run, "core alone", guide="none", role="core")
    eval_system(args, run, "large core alone", guide="none", role="large")
    path = alone_stats_path(run)
    if os.path.exists(path):
        print(f"baselines: {path} exists, kept")
        return
    train = load_tasks(run, "train")
    client = client_for(args, "core", run)
    messages = [families.family_of(t).core_messages(t.problem, None) for t in train for _ in range(cfg.alone_runs)]
    draws = [d for _ in train for d in range(cfg.alone_runs)]
    out = run_requests(client, messages, "core alone on train", draws=draws, **core_params(args))
    verdicts = families.grade([t for t in train for _ in range(cfg.alone_runs)], out)
    rows = []
    for i, t in enumerate(train):
        span = range(i * cfg.alone_runs, (i + 1) * cfg.alone_runs)
        runs = [out[j] for j in span if not isinstance(out[j], CoreError)]
        correct = [verdicts[j] for j in span if not isinstance(out[j], CoreError)]
        dollars = [d for d in (client.dollars(r) for r in runs) if d is not None]
        rows.append(dict(id=t.id, runs=len(runs), correct=sum(correct),
                         majority_correct=bool(runs) and 2 * sum(correct) > len(runs),
                         dollars=sum(dollars) / len(dollars) if dollars else None))
    write_jsonl(path, rows)
    solved = sum(r["majority_correct"] for r in rows) / max(1, len(rows))
    run.log("baselines", train_tasks=len(rows), alone_majority_correct=round(solved, 4), **client.stats())
    print(f"baselines: core alone solves {solved:.1%} of training tasks by majority of {cfg.alone_runs} runs")


def load_alone_stats(run):
    rows = read_jsonl(alone_stats_path(run), required=("id", "majority_correct", "dollars"))
    return {r["id"]: r for r in rows}


# ----------------------------------------------------------------------------------------------------------------
# 4. sample: teacher-guided acceptance sampling

def stage_sample(args, run):
    cfg = stage_config(SampleConfig, args)
    run.check_config("sample", cfg)
    raw_path, accepted_path = run.file("raw.jsonl"), run.file("accepted.jsonl")
    train = load_tasks(run, "train")
    # One file per chunk of tasks, written whole: a task is done only when its chunk's file exists, and then every
    # one of its K rows is in it. A kill at any moment loses at most the chunk being sampled.
    chunks = [train[i:i + cfg.chunk] for i in range(0, len(train), cfg.chunk)]
    paths = [run.file("sample", f"chunk-{i:05d}.jsonl") for i in range(len(chunks))]
    todo = [i for i, path in enumerate(paths) if not os.path.exists(path)]
    if not todo and os.path.exists(accepted_path):
        print(f"sample: {accepted_path} exists, kept")
        return
    os.makedirs(run.file("sample"), exist_ok=True)
    teacher, core = client_for(args, "teacher", run), client_for(args, "core", run)
    for i in tqdm(todo, desc="sample chunks", disable=len(todo) <= 1):
        write_jsonl(paths[i], sample_chunk(args, chunks[i], cfg, teacher, core))
    raw = [row for path in paths for row in read_jsonl(path, required=("task_id", "strategy", "accepted", "dollars"))]
    write_jsonl(raw_path, raw)
    accepted = select_accepted(raw, cfg.keep, cfg.select)
    write_jsonl(accepted_path, accepted)
    n_tasks = len({r["task_id"] for r in raw})
    covered = len({r["task_id"] for r in accepted})
    rate = sum(r["accepted"] for r in raw) / max(1, len(raw))
    teacher_dollars = teacher.stats()["dollars"]
    # how many tasks have an accepted strategy that names no number (every quantity by a phrase), within the
    # first k teacher draws: what the "handles" rule has to choose from at each K
    phrase_only = {k: len({r["task_id"] for r in raw if r["accepted"] and r["draw"] < k
                           and tasks.numbers_named(r["strategy"]) == 0})
                   for k in sorted({1, 2, 4, 8, 16, cfg.k}) if k <= cfg.k}
    run.log("sample", strategies=len(raw), acceptance_rate=round(rate, 4), accepted_kept=len(accepted),
            tasks_covered=covered, tasks_with_phrase_only_accepted=phrase_only, teacher=teacher.stats(),
            core=core.stats())
    print(f"sample: {len(raw)} teacher strategies for {n_tasks} tasks; acceptance rate {rate:.1%}; kept "
          f"{len(accepted)} covering {covered} tasks; teacher dollars this call "
          f"{'unknown' if teacher_dollars is None else f'${teacher_dollars:.4f}'}")


def sample_chunk(args, chunk, cfg, teacher, core):
    """K teacher strategies per task, each valid one run M times by the cheap core. One row per strategy."""
    replies = run_requests(teacher, [families.family_of(t).teacher_messages(t.problem, cfg.name_quantities)
                                     for t in chunk for _ in range(cfg.k)],
                           "teacher", draws=[d for _ in chunk for d in range(cfg.k)],
                           temperature=1.0, max_tokens=args.core_max_tokens)
    rows, runs_needed = [], []
    for i, t in enumerate(chunk):
        for d in range(cfg.k):
            reply = replies[i * cfg.k + d]
            if isinstance(reply, CoreError):
                continue
            strategy = tasks.extract_strategy(reply.text) or reply.text.strip()
            parsed = families.family_of(t).parse_strategy(strategy)
            rows.append(dict(task_id=t.id, draw=d, strategy=strategy, valid=parsed.valid,
                             invalid_reason=None if parsed.valid else parsed.error,
                             leaks=families.family_of(t).leaks(strategy, t),
                             teacher_dollars=teacher.dollars(reply), runs=[], _task=t))
            if parsed.valid:
                runs_needed.extend((len(rows) - 1, m) for m in range(cfg.m))
    executions = run_requests(core, [families.family_of(rows[i]["_task"]).core_messages(rows[i]["_task"].problem,
                                                                                        rows[i]["strategy"])
                                     for i, _ in runs_needed],
                              "cheap core executes", draws=[m for _, m in runs_needed], **core_params(args))
    verdicts = families.grade([rows[i]["_task"] for i, _ in runs_needed], executions)
    for (i, _), out, correct in zip(runs_needed, executions, verdicts):
        if not isinstance(out, CoreError):
            rows[i]["runs"].append(dict(correct=correct, dollars=core.dollars(out), output_tokens=out.output_tokens))
    for r in rows:
        del r["_task"]
        costs = [x["dollars"] for x in r["runs"] if x["dollars"] is not None]
        r["dollars"] = sum(costs) / len(costs) if costs else None
        r["accepted"] = is_accepted(r, cfg.m)
    return rows


def is_accepted(row, m):
    """The acceptance rule: valid, leaks nothing, and all M executions ran and were correct."""
    return bool(row["valid"] and not row["leaks"] and len(row["runs"]) == m and all(x["correct"] for x in row["runs"]))


# The order in which a task's accepted strategies are kept: cheapest first is ExecTune's own rule; a strategy that
# names quantities by the problem's own phrases costs the core a few more input tokens but is copied, not looked up,
# so a small guide imitates it far more easily (README, the reading levers).
def _cheapest(r):
    return r["dollars"] if r["dollars"] is not None else 0.0, len(r["strategy"])


SELECT_RULES = {"cheapest": _cheapest, "handles": lambda r: (tasks.numbers_named(r["strategy"]), *_cheapest(r))}


def select_accepted(raw, keep, select="cheapest"):
    """Per task, its distinct accepted strategies in SELECT_RULES[select] order, the first `keep` (0: all)."""
    by_task = {}
    for r in raw:
        if r["accepted"]:
            by_task.setdefault(r["task_id"], []).append(r)
    out = []
    for task_id, rows in by_task.items():
        rows.sort(key=SELECT_RULES[select])
        seen = set()
        for r in rows:
            if r["strategy"] not in seen and (keep == 0 or len(seen) < keep):
                seen.add(r["strategy"])
                out.append(dict(task_id=task_id, strategy=r["strategy"], dollars=r["dollars"]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# 5. sft

def sft_examples(run, tok, data, split_tasks, max_len):
    """(prompt tokens, strategy tokens + EOS) pairs; strategies come from accepted.jsonl or raw.jsonl."""
    path = run.file(f"{data}.jsonl")
    rows = read_jsonl(path, required=("task_id", "strategy"))
    by_id = {t.id: t for t in split_tasks}
    eos = tok.encode_single_token("<|eos|>")
    examples, dropped = [], 0
    for r in rows:
        t = by_id.get(r["task_id"])
        if t is None:
            continue
        prompt = families.prompt_tokens(tok, t)
        completion = tok.encode(r["strategy"], disallowed_special=()) + [eos]
        if len(prompt) + len(completion) > max_len:
            dropped += 1
            continue
        examples.append((prompt, completion))
    if dropped:
        print(f"sft: {dropped} examples longer than {max_len} tokens dropped", file=sys.stderr)
    return examples


def sft_batch(examples, pad_id):
    """Pad (prompt + completion) pairs into inputs / targets; the loss mask covers completion tokens only."""
    T = max(len(p) + len(c) for p, c in examples) - 1
    inputs = torch.full((len(examples), T), pad_id, dtype=torch.long)      # (B, T)
    targets = torch.full((len(examples), T), pad_id, dtype=torch.long)     # (B, T)
    loss_mask = torch.zeros((len(examples), T), dtype=torch.bool)          # (B, T)
    for i, (p, c) in enumerate(examples):
        seq = torch.tensor(p + c)
        n = len(seq) - 1
        inputs[i, :n], targets[i, :n] = seq[:-1], seq[1:]
        loss_mask[i, len(p) - 1:n] = True        # targets from the first strategy token through EOS
    return inputs, targets, loss_mask


def sft_batch_examples(examples, cfg, step, group=8):
    """The examples of SFT step `step`: a function of (seed, step), so a resumed run sees exactly the batches it would
    have seen. Every `group` steps draw group * batch_size examples at random and cut them, sorted by length, into
    `group` batches: a batch of similar lengths wastes little compute on padding (about a third less here)."""
    group = max(1, min(group, len(examples) // cfg.batch_size))
    rng = random.Random(cfg.seed * 1_000_003 + step // group)
    pool = sorted(rng.sample(examples, min(group * cfg.batch_size, len(examples))), key=lambda e: len(e[0]) + len(e[1]))
    batches = [pool[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(group)]
    rng.shuffle(batches)
    return batches[step % group]


def sft_loss(model, inputs, targets, loss_mask, prompt_weight=0.0):
    """Mean cross-entropy over strategy tokens (padding carries no loss), plus prompt_weight times the mean
    cross-entropy over the problem text before them: language modelling on unlabeled problem text, which the
    forward pass computes anyway."""
    with guide_model.autocast(inputs.device):
        logits = model(inputs)                                              # (B, T, V)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                         reduction="none").view_as(targets)  # (B, T)
    loss = (ce * loss_mask).sum() / loss_mask.sum()
    if prompt_weight:
        prompt_mask = loss_mask.cumsum(1) == 0                              # (B, T) positions before the strategy
        loss = loss + prompt_weight * (ce * prompt_mask).sum() / prompt_mask.sum()
    return loss


@torch.no_grad()
def sft_val_loss(model, examples, pad_id, batch_size):
    device = model.tok_emb.weight.device
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        inputs, targets, loss_mask = (x.to(device) for x in sft_batch(examples[i:i + batch_size], pad_id))
        n = loss_mask.sum().item()
        total += sft_loss(model, inputs, targets, loss_mask).item() * n
        count += n
    model.train()
    return total / max(1, count)


def lr_at(step, cfg, base_lr):
    """Linear warmup, then cosine decay to min_lr_ratio * base_lr."""
    if step < cfg.warmup:
        return base_lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def stage_sft(args, run):
    cfg = stage_config(SFTConfig, args)
    data = args.data
    tok = load_guide_tokenizer(run, args.init)
    if args.init:                               # a pretrained guide: its context must hold the longest example
        max_len = guide_config(run, args.init).max_seq_len
        if cfg.max_seq_len > max_len:
            raise UserError(f"sft: --max-seq-len {cfg.max_seq_len} is longer than the guide's context ({max_len})")
    run.check_config(f"sft-{data}", dict(asdict(cfg), init=args.init) if args.init else cfg)
    out_dir = run.file(f"sft-{data}")
    client = client_for(args, "core", run)      # best checkpoint: the core's accuracy on val with greedy strategies
    pad = tok.encode_single_token("<|pad|>")
    train_tasks, val_tasks = load_tasks(run, "train"), load_tasks(run, "val")
    canonical = train_tasks and families.family_of(train_tasks[0]).canonical_strategy
    if canonical:
        train = sft_examples(run, tok, data, train_tasks, cfg.max_seq_len)
        # validation: the same kind of strategies would need teacher calls on val; canonical strategies of val
        # tasks measure what matters (can the guide write a clear plan for an unseen problem) at no cost.
        eos = tok.encode_single_token("<|eos|>")
        val = [(p, c) for p, c in ((families.prompt_tokens(tok, t),
                                     tok.encode(canonical(t), disallowed_special=()) + [eos])
                                    for t in val_tasks) if len(p) + len(c) <= cfg.max_seq_len]
    else:
        # a real benchmark has no canonical strategies: the teacher strategies of every 20th training task are
        # held out instead
        train = sft_examples(run, tok, data, [t for i, t in enumerate(train_tasks) if i % 20], cfg.max_seq_len)
        val = sft_examples(run, tok, data, train_tasks[::20], cfg.max_seq_len)
    if not train:
        raise UserError(f"{run.file(data + '.jsonl')} holds no usable strategies")

    torch.manual_seed(cfg.seed)       # the fresh guide's weights; Python's RNG too, so that a checkpoint's RNG state
    random.seed(cfg.seed)             # is a function of the run, not of the process that wrote it

    def fresh():
        state = dict(step=0, best_step=None, best_accuracy=None, config=asdict(cfg))
        if args.init:                           # a pretrained guide (hf:<dir>)
            return load_guide(run, args.init, args.device)[0], dict(state, init=args.init)
        net = guide_model.Guide(guide_model.GuideConfig(
            vocab_size=tok.n_vocab, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
            n_kv_head=cfg.n_kv_head, max_seq_len=cfg.max_seq_len)).to(args.device)
        return net, state
    resumed = resume_or_start(f"sft {data}", out_dir, cfg.steps, args.device, fresh)
    if resumed is None:
        return
    net, optimizer_state, state = resumed
    net.grad_checkpointing = args.grad_checkpointing
    optimizer = make_optimizer(net, cfg.lr, cfg.weight_decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    start_step = state["step"]
    # the compiled module shares net's parameters: checkpoints, validation and generation use net itself
    train_net = torch.compile(net, dynamic=True) if cfg.compile else net
    n_params = sum(p.numel() for p in net.parameters())
    print(f"sft: {len(train)} {data} examples, {len(val)} val, guide {n_params / 1e6:.2f}M params")
    net.train()
    t0, tokens = time.time(), 0
    bar = tqdm(range(start_step, cfg.steps), desc=f"sft {data}", initial=start_step, total=cfg.steps)
    for step in bar:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg, cfg.lr)
        batch = sft_batch_examples(train, cfg, step)
        inputs, targets, loss_mask = (x.to(args.device) for x in sft_batch(batch, pad))
        loss = sft_loss(train_net, inputs, targets, loss_mask, cfg.prompt_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip).item()
        optimizer.step()
        tokens += inputs.numel()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val_loss = sft_val_loss(net, val, pad, 64)
            accuracy, texts = val_accuracy(args, client, net, tok, val_tasks, 160)
            plan_exact, exact_success = evaluate.plan_scores(val_tasks, texts)
            net.train()
            state["step"] = step + 1
            if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
                state.update(best_step=step + 1, best_accuracy=accuracy)
            guide_model.save_training(out_dir, net, optimizer, state, save_model=guide_saver(tok))
            run.log(f"sft-{data}", step=step + 1, loss=round(loss.item(), 4), val_loss=round(val_loss, 4),
                    val_accuracy=round(accuracy, 4),
                    val_plan_exact=rounded(plan_exact), val_exact_success=rounded(exact_success),
                    lr=optimizer.param_groups[0]["lr"], grad_norm=round(grad_norm, 3),
                    tokens_per_s=round(tokens / (time.time() - t0)))
            bar.write(f"sft {data} step {step + 1}: train loss {loss.item():.3f}, val loss {val_loss:.3f}, val accuracy "
                      f"{accuracy:.3f} (best {state['best_accuracy']:.3f}), exact plans "
                      f"{evaluate.fmt(plan_exact, '{:.1%}')}, mean exact success {evaluate.fmt(exact_success)}")


def val_accuracy(args, client, net, tok, val_tasks, max_new_tokens):
    """(accuracy of the core with the guide's greedy strategies on val tasks, the strategies): what SFT and GRPO
    choose their best checkpoint by, measured like the test split is."""
    texts, _ = evaluate.guide_strategies(net, tok, val_tasks, max_new_tokens, 64, desc="val")
    replies = run_requests(client, [families.family_of(t).core_messages(t.problem, s)
                                    for t, s in zip(val_tasks, texts)], "val core", **core_params(args))
    ok = [v for v in families.grade(val_tasks, replies) if v is not None]
    return sum(ok) / max(1, len(ok)), texts


def resume_or_start(what, out_dir, steps, device, fresh):
    """What SFT and GRPO train from: (net, optimizer state or None, state) of the newest complete checkpoint in
    out_dir (model.resume_training), else fresh() with no optimizer state; None when that checkpoint already
    reached `steps`, so the stage is done."""
    try:
        resumed = guide_model.resume_training(out_dir, device, load_model=read_guide)
    except (guide_model.CheckpointError, hf.HFError) as e:
        raise UserError(str(e))
    if resumed is None:
        net, state = fresh()
        return net, None, state
    step = resumed[2]["step"]
    if step >= steps:
        print(f"{what}: {out_dir} finished ({step} steps), kept")
        return None
    print(f"{what}: resuming {out_dir} from step {step}")
    return resumed


def make_optimizer(net, lr, weight_decay):
    """AdamW; no weight decay on norms and biases (1-D parameters)."""
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    return torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)],
                             lr=lr, betas=(0.9, 0.95))


# ----------------------------------------------------------------------------------------------------------------
# 6. grpo

def stage_grpo(args, run):
    """GRPO from an SFT checkpoint; evaluates greedy accuracy on val every eval_every steps and keeps the best
    (the starting checkpoint included, so RL that does not help leaves the guide as it was)."""
    cfg = stage_config(GRPOStageConfig, args)
    name = f"grpo-{args.reward}"
    run.check_config(name, dict(asdict(cfg), init=args.init))
    out_dir = run.file(name)
    tok = load_guide_tokenizer(run, args.init)
    train, val = load_tasks(run, "train"), load_tasks(run, "val")[:cfg.n_val_eval]
    alone = {i: dict(alone_majority_correct=r["majority_correct"], alone_dollars=r["dollars"])
             for i, r in load_alone_stats(run).items()}
    client = client_for(args, "core", run)
    torch.manual_seed(cfg.seed)       # as in SFT: every RNG state a checkpoint saves is a function of the run
    random.seed(cfg.seed)

    def fresh():
        state = dict(step=0, best_step=None, best_accuracy=None, config=asdict(cfg), init=args.init)
        return load_guide(run, args.init, args.device)[0], state
    resumed = resume_or_start(name, out_dir, cfg.steps, args.device, fresh)
    if resumed is None:
        return
    net, optimizer_state, state = resumed
    net.grad_checkpointing = args.grad_checkpointing
    optimizer = make_optimizer(net, cfg.lr, weight_decay=0.0)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    ref_model = None
    if cfg.kl_beta > 0:
        ref_model = load_guide(run, args.init, args.device)[0].eval().requires_grad_(False)
    order = random.Random(cfg.seed).sample(train, len(train))   # a fixed pass order, so a resume sees the same tasks

    def validate_and_save(step):
        """The core's accuracy on val with greedy strategies, then the checkpoint of this step (the best if it is)."""
        accuracy, texts = val_accuracy(args, client, net, tok, val, cfg.max_new_tokens)
        plan_exact, exact_success = evaluate.plan_scores(val, texts)
        state["step"] = step
        if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
            state.update(best_step=step, best_accuracy=accuracy)
        guide_model.save_training(out_dir, net, optimizer, state, save_model=guide_saver(tok))
        run.log(name, step=step, val_accuracy=round(accuracy, 4), best_val_accuracy=round(state["best_accuracy"], 4),
                val_plan_exact=rounded(plan_exact), val_exact_success=rounded(exact_success))
        return accuracy

    if optimizer_state is None:       # a fresh start: the starting guide is step 0, and the best so far
        validate_and_save(0)
    bar = tqdm(range(state["step"], cfg.steps), desc=name, initial=state["step"], total=cfg.steps)
    for step in bar:
        start = step * cfg.prompts_per_step % len(order)
        batch = (order + order)[start:start + cfg.prompts_per_step]
        generator = torch.Generator(args.device).manual_seed(cfg.seed * 100_003 + step)
        metrics = grpo.grpo_step(net, optimizer, tok, batch, client, alone, cfg, kind=args.reward,
                                 generator=generator, ref_model=ref_model, step=step, core_params=core_params(args))
        run.log(name, **metrics)
        bar.set_postfix(reward=metrics["reward"], valid=metrics["validity_rate"], success=metrics["success_rate"])
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            accuracy = validate_and_save(step + 1)
            bar.write(f"{name} step {step + 1}: reward {evaluate.fmt(metrics['reward'])}, val accuracy {accuracy:.3f} "
                      f"(best {state['best_accuracy']:.3f})")


# ----------------------------------------------------------------------------------------------------------------
# 7. eval

def guide_dir(run, guide):
    """A guide argument as a directory: "hf:<dir>" is a Hugging Face directory as given, else a path (relative to
    the run when it does not exist as given)."""
    if guide.startswith("hf:"):
        return guide[len("hf:"):]
    return guide if os.path.isabs(guide) or os.path.exists(guide) else run.file(guide)


def is_hf_dir(path):
    return os.path.isfile(os.path.join(path, "tokenizer.json"))


def load_guide(run, guide, device="cpu"):
    """(model, tokenizer) of a guide: a Hugging Face directory (a pretrained guide, or a checkpoint trained from
    one) brings its own tokenizer; a project checkpoint uses the run's."""
    path = guide_dir(run, guide)
    try:
        if guide.startswith("hf:") or is_hf_dir(path):
            return hf.load_hf(path, device, torch.float32)   # fp32 weights; on CUDA the math runs in bf16 autocast
        return guide_model.load_checkpoint(path, device), load_tokenizer(run)
    except (guide_model.CheckpointError, hf.HFError) as e:
        raise UserError(str(e))


def guide_config(run, guide):
    """A guide's GuideConfig without reading its weights."""
    path = guide_dir(run, guide)
    try:
        if guide.startswith("hf:") or is_hf_dir(path):
            return hf.load_hf_config(path)
        return guide_model.GuideConfig(**read_json(os.path.join(path, "config.json")))
    except (hf.HFError, TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}")


def load_guide_tokenizer(run, init):
    """The tokenizer a stage trains with: the pretrained guide's when init is one, else the run's own."""
    path = guide_dir(run, init) if init else None
    if path and (init.startswith("hf:") or is_hf_dir(path)):
        try:
            return hf.load_hf_tokenizer(path)
        except hf.HFError as e:
            raise UserError(str(e))
    return load_tokenizer(run)


def read_guide(path, device="cpu"):
    """The model of a checkpoint directory of either kind (resume_training's load_model)."""
    if is_hf_dir(path):
        return hf.load_hf(path, device, torch.float32)[0]
    return guide_model.load_checkpoint(path, device)


def guide_saver(tok):
    """save_training's save_model for a guide that reads with tok: a guide with a pretrained tokenizer is written as
    a Hugging Face directory (servable as it is), any other as a project checkpoint."""
    if isinstance(tok, hf.HFEncoding):
        return lambda net, path: hf.save_hf(net, tok, path)
    return guide_model.save_checkpoint


def eval_system(args, run, name, guide, role="core"):
    """One system on the test split and the held-out-phrasing split (evaluate.py says what is measured): guide
    (checkpoint path, 'teacher' or 'none') + core (role core|large). Appends its row to results.json and rewrites
    results.md; the per-task rows go to eval/<name>.jsonl."""
    results_path = run.file("results.json")
    results = read_json(results_path) if os.path.exists(results_path) else []
    cfg = stage_config(EvalConfig, args)
    spec = dict(name=name, guide=guide, core_role=role, **asdict(cfg))
    if any(r["spec"] == spec for r in results):
        print(f"eval: {name!r} already in {results_path}, kept")
        return
    # a real benchmark (gsm8k) has no held-out-phrasing split: its ood column stays empty
    has_ood = os.path.exists(run.file("data", "ood.jsonl"))
    test = load_tasks(run, "test") + (load_tasks(run, "ood") if has_ood else [])
    client = client_for(args, role, run)
    guide_tokens, teacher_dollars, failed = [0] * len(test), [0.0] * len(test), {}
    if guide == "none":
        strategies = [None] * len(test)
    elif guide == "teacher":
        teacher = client_for(args, "teacher", run)
        # the teacher asked as acceptance sampling asked it (that stage's recorded configuration, else the default)
        configs = read_json(run.file("config.json")) if os.path.exists(run.file("config.json")) else {}
        name_quantities = configs.get("sample", {}).get("name_quantities", SampleConfig.name_quantities)
        replies = run_requests(teacher, [families.family_of(t).teacher_messages(t.problem, name_quantities)
                                         for t in test],
                               "teacher on test+ood", temperature=1.0, max_tokens=args.core_max_tokens)
        # a task whose teacher call failed for good is counted as failed, never quietly run without a strategy
        failed = {i: r for i, r in enumerate(replies) if isinstance(r, CoreError)}
        strategies = [None if i in failed else (tasks.extract_strategy(r.text) or r.text.strip())
                      for i, r in enumerate(replies)]
        teacher_dollars = [None if i in failed else teacher.dollars(r) for i, r in enumerate(replies)]
    else:
        net, tok = load_guide(run, guide, args.device)
        strategies, guide_tokens = evaluate.guide_strategies(net, tok, test, cfg.max_new_tokens, cfg.batch_size)
    todo = [i for i in range(len(test)) if i not in failed]
    core_replies = run_requests(client, [families.family_of(test[i]).core_messages(test[i].problem, strategies[i])
                                         for i in todo], f"{name}: core", **core_params(args))
    replies = failed | dict(zip(todo, core_replies))
    per_task = evaluate.grade(test, strategies, [replies[i] for i in range(len(test))], client, guide_tokens,
                                teacher_dollars)
    os.makedirs(run.file("eval"), exist_ok=True)
    write_jsonl(run.file("eval", f"{slug(name)}.jsonl"), per_task)
    alone_path = run.file("eval", "core-alone.jsonl")
    alone = {r["id"]: r for r in read_jsonl(alone_path)} if os.path.exists(alone_path) else None
    summary = evaluate.summarize([r for r in per_task if r["split"] == "test"], client.model, guide, alone)
    ood = [r for r in per_task if r["split"] == "ood" and not r["failed"]]
    k_ood = sum(r["correct"] for r in ood)
    summary.update(n_ood=len(ood), accuracy_ood=k_ood / max(1, len(ood)) if has_ood else None,
                   accuracy_ood_ci=evaluate.wilson(k_ood, len(ood)) if has_ood else None)
    with run.writer("results"):          # another system's eval may have added its row since we read the file
        results = read_json(results_path) if os.path.exists(results_path) else []
        results = [r for r in results if r["name"] != name] + [dict(name=name, spec=spec, **summary)]
        write_json(results_path, results)
        guide_model.atomic_write(run.file("results.md"), evaluate.table(results))
    run.log("eval", **summary)
    print(f"eval: {name}: accuracy {summary['accuracy']:.3f} "
          f"[{summary['accuracy_ci'][0]:.3f}, {summary['accuracy_ci'][1]:.3f}]" + (
              f", on held-out phrasings {summary['accuracy_ood']:.3f} [{summary['accuracy_ood_ci'][0]:.3f}, "
              f"{summary['accuracy_ood_ci'][1]:.3f}]" if has_ood else ""))


def stage_eval(args, run):
    if args.guide not in ("none", "teacher"):
        load_guide(run, args.guide)  # fail early with a clear line on a bad path
    if args.family:                  # evaluate on this family: a run without data gets the data stage's first
        path = run.file("config.json")
        made = (read_json(path) if os.path.exists(path) else {}).get("data")
        if made is None:
            stage_data(args, run)
        elif made["family"] != args.family:
            raise UserError(f"{run.path} holds {made['family']} tasks, not {args.family}; use another --run")
    eval_system(args, run, args.name or args.guide, args.guide, role=args.core_role)


def stage_table(args, run):
    """Print results.md (and draw curves.png when matplotlib is installed), then one JSON summary line."""
    results = read_json(run.file("results.json"))
    text = evaluate.table(results)
    guide_model.atomic_write(run.file("results.md"), text)
    print(text, end="")
    metrics = run.file("metrics.jsonl")
    rows = read_jsonl(metrics, required=("stage",)) if os.path.exists(metrics) else []
    plot = evaluate.plot_curves(rows, run.file("curves.png"))
    if plot:
        print(f"SFT and GRPO learning curves -> {plot}")
    dollars = {r["name"]: evaluate.dollars_per_1k(r) for r in results}
    summary = dict(run=run.path, wall_s=args.wall_s, tasks=results[0]["n"] if results else 0,
                   accuracy={r["name"]: round(r["accuracy"], 4) for r in results},
                   accuracy_ood={r["name"]: rounded(r["accuracy_ood"]) for r in results},
                   dollars_per_1k={k: None if v is None else round(v, 4) for k, v in dollars.items()})
    print(json.dumps(summary))


# ----------------------------------------------------------------------------------------------------------------
# command line

STAGES = {  # name: (function, its config dataclasses, what it does in a few words for --help)
    "data": (stage_data, [DataConfig], "write seeded train / val / test tasks, or read GSM8K's"),
    "tokenizer": (stage_tokenizer, [TokenizerConfig], "train the guide's byte-level BPE on the training text"),
    "baselines": (stage_baselines, [BaselineConfig], "the cores alone on test, and core-alone runs of train"),
    "sample": (stage_sample, [SampleConfig], "teacher strategies run by the core; keep the accepted ones"),
    "sft": (stage_sft, [SFTConfig], "train a fresh guide (or fine-tune a pretrained one) on accepted "
                                      "(or raw) teacher strategies"),
    "grpo": (stage_grpo, [GRPOStageConfig], "RL of an SFT guide against the live core"),
    "eval": (stage_eval, [EvalConfig, DataConfig], "one system on the test split: a row of the results table (with "
                                                   "--family, a run without data gets the data stage's first)"),
    "table": (stage_table, [], "print results.md and a one-line JSON summary"),
}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A bad flag: one line and exit 2 (argparse's usage block would bury the line that matters)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    env = os.environ.get
    p = Parser(description=__doc__.split("\n")[0],
                                epilog="bash train.sh runs the stages in this order; `exectune.py STAGE --help` "
                                       "lists a stage's flags.")
    sub = p.add_subparsers(dest="stage", required=True)
    p.stage_parsers = {}
    for name, (_, configs, what) in STAGES.items():
        s = p.stage_parsers[name] = sub.add_parser(name, help=what, description=what)
        s.add_argument("--run", default=env("RUN", "runs/default"), help="run directory (default runs/default)")
        s.add_argument("--preset", default=env("PRESET") or ("quick" if env("QUICK") == "1" else None),
                       help=f"sizes for another budget: {', '.join(PRESETS)} (env PRESET; QUICK=1 means quick)")
        s.add_argument("--quick", dest="preset", action="store_const", const="quick", help="the same as --preset quick")
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
            add_config_flags(s, cls)
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
            s.add_argument("--reward", choices=["structure", "outcome"], default="structure")
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
                (args.preset is not None and args.preset not in PRESETS,
                 f"--preset / PRESET {args.preset!r} is not one of {', '.join(PRESETS)}")]
    for bad, message in problems:
        if bad:
            parser.error(message)
    try:
        args.device = check_device(args.device)
        for cls in STAGES[args.stage][1]:
            stage_config(cls, args)
    except (UserError, ValueError) as e:
        parser.error(str(e))


def slug(name):
    """A system's name as a file name: eval/<slug>.jsonl and its lock."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def writer_of(args):
    """The outputs a command writes, as the name of its lock: one writer each."""
    if args.stage == "sft":
        return f"sft-{args.data}"
    if args.stage == "grpo":
        return f"grpo-{args.reward}"
    if args.stage == "eval":
        return "eval-" + slug(args.name or args.guide)
    return args.stage


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser.stage_parsers[args.stage], args)
    # OMP_NUM_THREADS, when set, wins: train.sh gives each of two guides trained side by side one core
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, os.cpu_count() or 1))
    try:
        run = Run(args.run)
        with contextlib.ExitStack() as held:
            if args.stage != "table":        # the one stage that only reads
                held.enter_context(run.writer(writer_of(args)))
            STAGES[args.stage][0](args, run)
    except (UserError, CoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
