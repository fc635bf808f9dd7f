"""torchrun data parallelism on the CPU (gloo): two processes train as one process does on the same global batch,
and a run that loses a process stops with one line and resumes to the same weights."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from conftest import ROOT, cli
from test_exectune import TINY_SFT, read_jsonl


def torchrun_command(url, nproc, *argv):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            os.path.join(ROOT, "exectune.py"), argv[0], "--core-url", url, "--concurrency", "8", *argv[1:]]


def torchrun_env(run):
    # the run directory by RUN: torchrun's own parser takes `--run` for a prefix of its `--run-path`
    return dict(os.environ, OMP_NUM_THREADS="1", RUN=str(run))


def torchrun(run, url, nproc, *argv):
    return subprocess.run(torchrun_command(url, nproc, *argv), capture_output=True, text=True, timeout=600,
                          env=torchrun_env(run), cwd=ROOT)


def weights(run, path):
    return checkpoint.load_checkpoint(str(run / path)).state_dict()


def assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def copy_run(src, dst):
    shutil.copytree(src, dst)
    for name in ("locks",):
        shutil.rmtree(dst / name, ignore_errors=True)
    return dst


GRPO = ["--steps", "2", "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "24", "--eval-every",
        "1", "--n-val-eval", "4"]


def test_two_processes_train_as_one(tiny_run, core_url, tmp_path):
    one, two = copy_run(tiny_run, tmp_path / "one"), copy_run(tiny_run, tmp_path / "two")
    assert cli(one, core_url, "sft", "--data", "raw", *TINY_SFT) == 0
    out = torchrun(two, core_url, 2, "sft", "--data", "raw", *TINY_SFT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_close(weights(one, "sft-raw/step-000008"), weights(two, "sft-raw/step-000008"))
    losses = [[m["loss"] for m in read_jsonl(run / "metrics.jsonl") if m["stage"] == "sft-raw"] for run in (one, two)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4)

    # GRPO from the same checkpoint: the step's tasks, rollouts and core calls split over the processes
    shutil.rmtree(two / "sft-raw")
    shutil.copytree(one / "sft-raw", two / "sft-raw", symlinks=True)
    assert cli(one, core_url, "grpo", "--init", "sft-raw/best", "--reward", "outcome", *GRPO) == 0
    out = torchrun(two, core_url, 2, "grpo", "--init", "sft-raw/best", "--reward", "outcome", *GRPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_close(weights(one, "grpo-outcome/step-000002"), weights(two, "grpo-outcome/step-000002"))
    steps = [[m for m in read_jsonl(run / "metrics.jsonl") if m["stage"] == "grpo-outcome" and "reward" in m]
             for run in (one, two)]
    assert [m["samples"] for m in steps[1]] == [6, 6]          # the metrics cover both processes' samples
    for a, b in zip(*steps):
        assert a["reward"] == pytest.approx(b["reward"]) and a["completion_tokens"] == b["completion_tokens"]


def rank_pid(run, rank):
    """The pid of the exectune process of `rank` working on `run` (read from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and f"RUN={run}".encode() in env and b"exectune.py" in cmd:
            return int(pid)
    return None


def test_a_lost_process_stops_the_run_with_one_line_and_it_resumes(tiny_run, core_url, tmp_path):
    steps = ["--steps", "40", "--batch-size", "4", "--eval-every", "4"] + TINY_SFT[6:]
    whole, broken = copy_run(tiny_run, tmp_path / "whole"), copy_run(tiny_run, tmp_path / "broken")
    assert cli(whole, core_url, "sft", "--data", "raw", *steps) == 0

    proc = subprocess.Popen(torchrun_command(core_url, 2, "sft", "--data", "raw", *steps), env=torchrun_env(broken),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (broken / "sft-raw" / "step-000004").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    pid = rank_pid(broken, 1)
    assert pid is not None and proc.poll() is None, "the run ended before a process could be stopped"
    os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "run the same command again to resume" in ours[0], stderr[-3000:]
    assert not (broken / "sft-raw" / "step-000040").exists()

    out = torchrun(broken, core_url, 2, "sft", "--data", "raw", *steps)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout
    assert_close(weights(whole, "sft-raw/step-000040"), weights(broken, "sft-raw/step-000040"))
