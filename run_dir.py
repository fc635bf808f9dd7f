"""The run directory: where every stage of the recipe reads and writes, and the guides it holds.

1. `Run` is one directory, runs/<name>/: each stage's outputs, config.json (each stage's configuration; a stage
   refuses to resume with another one), metrics.jsonl (one JSON object per logged event), locks/ (one writer per
   output).
2. JSON and JSON-lines files are written atomically (checkpoint.atomic_write) and read with one-line errors that name
   the file and the line.
3. A guide is a checkpoint directory of the run (a project checkpoint, read with the run's tokenizer) or a Hugging
   Face directory (`hf:<dir>`, or a checkpoint trained from one), which brings its own tokenizer.
"""
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict

import torch

import checkpoint
import families
import hf
import model as guide_model
import tokenizer


class UserError(Exception):
    """A problem the user can fix; exectune.main prints it as one line and exits 1."""


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

    def recorded(self, stage):
        """The configuration a stage recorded in config.json (check_config), or None when it has not run."""
        path = self.file("config.json")
        return (read_json(path) if os.path.exists(path) else {}).get(stage)

    def check_config(self, stage, cfg, outputs=None, defaults=None):
        """Remember a stage's configuration; refuse to resume a stage that was started with another one, unless its
        `outputs` (a path) are gone: then the stage starts anew and records the new one. `defaults` (a dataclass
        instance at its defaults): a setting the code gained after the stage ran counts as recorded at its default,
        the behaviour the stage had. Stages may run at once (train.sh trains the two SFT guides side by side), so the
        read-modify-write holds a lock."""
        path = self.file("config.json")
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            configs = read_json(path) if os.path.exists(path) else {}
            cfg = asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
            old = configs.get(stage)
            if old is not None and defaults is not None:
                added = {k: v for k, v in asdict(defaults).items() if k in cfg and k not in old}
                old = added | old
            if old is not None and old != cfg and (outputs is None or os.path.exists(outputs)):
                diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes(old, cfg))
                raise UserError(f"{self.path} was made with another {stage} configuration ({diff}); use another "
                                f"--run, or delete {outputs or 'its ' + stage + ' entry in ' + path} to redo it")
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
    checkpoint.atomic_write(path, json.dumps(obj, indent=2) + "\n")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file")
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}")


def write_jsonl(path, rows):
    checkpoint.atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


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


RENAMED_TASKS = "renamed_tasks.jsonl"   # training problems with new numbers (sample --renamings), beside data/


def load_tasks(run, split):
    path = run.file("data", f"{split}.jsonl")
    rows = read_jsonl(path, required=("id",))      # the family's from_json checks the rest
    if not rows:
        raise UserError(f"{path} holds no tasks")
    return _tasks(path, rows)


def renamed_id(task_id, n):
    """The id of copy n of a task with new numbers (sample --renamings): the original's id, then "~r<n>"."""
    return f"{task_id}~r{n}"


def original_id(task_id):
    """The id of the task a renamed copy (renamed_id) was made from; a task's own id for an original."""
    return task_id.split("~")[0]


def load_renamed_tasks(run, originals):
    """The copies with new numbers of the tasks whose ids are in `originals` that accepted strategies were carried
    over to (sample --renamings); none when the run has no such file."""
    path = run.file(RENAMED_TASKS)
    tasks = _tasks(path, read_jsonl(path, required=("id",))) if os.path.exists(path) else []
    return [t for t in tasks if original_id(t.id) in originals]


def _tasks(path, rows):
    try:
        return [families.get(r.get("family", "mathsim")).task_from_json(r) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: a task could not be read ({e})")


def load_tokenizer(run):
    path = run.file("tokenizer.tiktoken")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file (run `exectune.py tokenizer` first)")
    return tokenizer.load_tokenizer(path)


def alone_stats_path(run):
    """The baselines stage's core-alone runs of every training task (the reward's harm and cost terms read them)."""
    return run.file("alone_train.jsonl")


def load_alone_stats(run):
    rows = read_jsonl(alone_stats_path(run), required=("id", "runs", "correct", "majority_correct", "dollars"))
    return {r["id"]: r for r in rows}


# ----------------------------------------------------------------------------------------------------------------
# guides

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
        return checkpoint.load_checkpoint(path, device), load_tokenizer(run)
    except (checkpoint.CheckpointError, hf.HFError) as e:
        raise UserError(str(e))


TRAINING_STATE = {"optimizer.pt", "rng.pt"}   # a checkpoint's files that resume training but are not the guide


def guide_fingerprint(run, guide):
    """A digest of a guide checkpoint's files (names and contents), so an evaluation row can tell that the guide
    it measured has since been retrained or replaced (the `best` link moved, or the files rewritten)."""
    path = os.path.realpath(guide_dir(run, guide))
    if not os.path.isdir(path):
        raise UserError(f"{guide_dir(run, guide)}: no such guide checkpoint directory")
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(set(files) - TRAINING_STATE):
            digest.update(os.path.relpath(os.path.join(root, name), path).encode() + b"\0")
            with open(os.path.join(root, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


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
    return checkpoint.load_checkpoint(path, device)


def guide_saver(tok):
    """save_training's save_model for a guide that reads with tok: a guide with a pretrained tokenizer is written as
    a Hugging Face directory (servable as it is), any other as a project checkpoint."""
    if isinstance(tok, hf.HFEncoding):
        return lambda guide, path: hf.save_hf(guide, tok, path)
    return checkpoint.save_checkpoint


def slug(name):
    """A system's name as a file name: eval/<slug>.jsonl and its lock."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def changes(old, new, prefix=""):
    """(key, old value, new value) for every entry that differs between two recorded configurations, nested ones
    (grpo's reward weights) by dotted key, so a message names the one weight that changed."""
    out = []
    for k in list(new) + [k for k in old if k not in new]:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((prefix + k, a, b))
    return out
