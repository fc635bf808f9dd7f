"""Checkpoints of the guide, and the atomic file writes under every saved file of the recipe.

1. save_checkpoint / load_checkpoint: a directory with model.safetensors and config.json; load_checkpoint raises
   CheckpointError naming the file and the problem, and checks every size against the config before allocating.
2. A training checkpoint (save_training / resume_training) adds the optimizer, the RNG states and the trainer's
   state, and is one directory written under a temporary name and renamed into place, so a run killed at any moment
   resumes from a complete one. out_dir/best points at the best step; older steps are removed.
Every file is written by atomic_write: the old file or the new one, never a torn one.
"""
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, fields

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from model import Guide, GuideConfig


class CheckpointError(Exception):
    """A checkpoint that is missing, torn or does not fit its config; the message names the file."""


def atomic_write(path, data: bytes | str):
    """Write data to path so that a reader, or a run killed at any moment, finds the old file or the new one whole:
    a temp file beside path, flushed to disk, then renamed over path in one step."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _weights(model):
    """The state dict to save: contiguous tensors, the tied output layer left out (it is the embedding)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(model, path_dir):
    """Write path_dir/model.safetensors and path_dir/config.json."""
    os.makedirs(path_dir, exist_ok=True)
    atomic_write(os.path.join(path_dir, "model.safetensors"), save(_weights(model), metadata={"format": "pt"}))
    atomic_write(os.path.join(path_dir, "config.json"), json.dumps(asdict(model.config), indent=2))


def load_checkpoint(path_dir, device="cpu") -> Guide:
    """The Guide saved in path_dir; raises CheckpointError naming the file and what is wrong with it."""
    config_path = os.path.join(path_dir, "config.json")
    weights_path = os.path.join(path_dir, "model.safetensors")
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (a checkpoint directory holds config.json and model.safetensors)")
    try:
        with open(config_path) as f:
            raw = json.load(f)
        known = {f.name for f in fields(GuideConfig)}
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else None
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        config = GuideConfig(**raw)
    except (ValueError, TypeError) as e:    # JSONDecodeError is a ValueError
        raise CheckpointError(f"{config_path}: not a valid GuideConfig ({e})") from None
    try:                                    # shapes from the file's header and the config, before allocating
        with safe_open(weights_path, "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        with torch.device("meta"):
            implied = {k: tuple(v.shape) for k, v in Guide(config).state_dict().items()
                       if not (config.tie_embeddings and k == "lm_head.weight")}
    except Exception as e:                  # safetensors raises its own error type for torn or corrupt files
        raise CheckpointError(f"{weights_path}: torn or corrupt safetensors file ({e})") from None
    if stored != implied:
        wrong = sorted(k for k in set(stored) | set(implied) if stored.get(k) != implied.get(k))
        raise CheckpointError(f"{weights_path}: does not match {config_path}: " + ", ".join(
            f"{k} {stored.get(k)} vs {implied.get(k)}" for k in wrong[:3]))
    try:
        weights = load_file(weights_path)
    except Exception as e:
        raise CheckpointError(f"{weights_path}: torn or corrupt safetensors file ({e})") from None
    model = Guide(config)
    if "tok_emb.weight" in weights:                  # keep the stored precision (fp32, bf16, fp64)
        model.to(weights["tok_emb.weight"].dtype)
    expected = _weights(model)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{weights_path}: does not match {config_path}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    model.load_state_dict(weights, strict=False)   # strict=False: a tied lm_head.weight is not stored
    return model.to(device)


# A training checkpoint is out_dir/step-NNNNNN; `best` is a relative symlink to the best step's directory.
_STEP_DIR = re.compile(r"step-(\d{6,})")


def save_training(out_dir, model, optimizer, state, save_model=save_checkpoint):
    """Save a resumable training checkpoint: out_dir/step-NNNNNN with the model (save_model(model, dir): by default
    model.safetensors and config.json; a pretrained guide is written as a Hugging Face directory instead),
    optimizer.pt, rng.pt (torch, CUDA and Python RNG states) and state.json (`state`: "step", "best_step" and
    whatever else the trainer keeps, such as its config and best validation score). The directory is written whole
    under a temporary name and renamed into place: it exists complete or not at all, and the newest one is the run's
    state. Then out_dir/best is pointed at the best step and the directories that neither needs are removed."""
    name = f"step-{state['step']:06d}"
    tmp = os.path.join(out_dir, ".tmp-" + name)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)                        # the torn remains of a save that was killed
    save_model(model, tmp)
    atomic_write(os.path.join(tmp, "state.json"), json.dumps(state, indent=2))
    for file, obj in [("optimizer.pt", optimizer.state_dict()), ("rng.pt", _rng_states())]:
        with open(os.path.join(tmp, file), "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    os.rename(tmp, os.path.join(out_dir, name))   # the commit: one atomic step
    _settle(out_dir, state)


def resume_training(out_dir, device="cpu", load_model=load_checkpoint, settle=True):
    """(model, optimizer state dict, state) of the newest complete checkpoint in out_dir (its model read by
    load_model(dir, device), the reader that matches save_training's save_model), with the RNG states it saved
    restored; None when there is none. A save that was killed leaves only temporaries behind: they are removed
    (settle=False leaves the directory as it is: the processes of a data-parallel run but one only read it)."""
    found = sorted((int(m.group(1)), m.group(0)) for m in map(_STEP_DIR.fullmatch, _entries(out_dir)) if m)
    if not found:
        return None
    path = os.path.join(out_dir, found[-1][1])
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    model = load_model(path, device)
    optimizer_state = torch.load(os.path.join(path, "optimizer.pt"), map_location=device)
    _set_rng_states(torch.load(os.path.join(path, "rng.pt")))   # last: building the model above draws from the RNG
    if settle:
        _settle(out_dir, state)                   # a kill may have come between the rename and the clean-up
    return model, optimizer_state, state


def _settle(out_dir, state):
    """Point out_dir/best at state's best step (a new symlink renamed over the old one: atomic) and remove every
    checkpoint directory but that one and the newest, and any temporaries."""
    link = os.path.join(out_dir, ".tmp-best")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(f"step-{state['best_step']:06d}", link)
    os.replace(link, os.path.join(out_dir, "best"))
    keep = {f"step-{state['step']:06d}", f"step-{state['best_step']:06d}"}
    for entry in _entries(out_dir):
        if (_STEP_DIR.fullmatch(entry) and entry not in keep) or entry.startswith(".tmp-"):
            path = os.path.join(out_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def _entries(directory):
    return os.listdir(directory) if os.path.isdir(directory) else []


def _rng_states():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

