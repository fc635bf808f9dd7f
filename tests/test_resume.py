"""Kill -9 at random moments: `sample`, `sft` and `grpo` each run as a real exectune.py process, are killed with
SIGKILL several times at random points of their work, and are started again with the same command; the outputs they
finish with must be byte for byte those of an uninterrupted run. The same holds for `sft --init hf:<dir>` on GSM8K,
whose checkpoints are Hugging Face directories."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

import exectune
import sim_core
from conftest import ROOT, answering

KILLS = 3
STAGES = [  # (where it works, command, outputs), in the recipe's order: each reads what the one before it wrote
    ("sample", ["sample", "--k", "2", "--m", "2", "--keep", "1", "--chunk", "3"], ["raw.jsonl", "accepted.jsonl"]),
    ("sft-accepted", ["sft", "--data", "accepted", "--steps", "12", "--batch-size", "4", "--eval-every", "3",
                      "--warmup", "2", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-kv-head", "1",
                      "--no-compile", "--max-new-tokens", "16"],
     ["sft-accepted"]),
    ("grpo-structure", ["grpo", "--init", "sft-accepted/best", "--steps", "4", "--prompts-per-step", "2",
                        "--group-size", "3", "--eval-every", "1", "--n-val-eval", "2"],    # the run's budget: 16
     ["grpo-structure"]),
]


@pytest.fixture(scope="module")
def core_url():
    server, url = sim_core.start_server()
    yield url + "/v1"
    server.shutdown()


def command(run, url, argv):
    return [sys.executable, "exectune.py", argv[0], "--run", str(run), "--core-url", url, "--concurrency", "4",
            *argv[1:]]


def snapshot(run, outputs):
    """Every output file's bytes, by path relative to the run (a checkpoint's `best` link by its target)."""
    found = {}
    for name in outputs:
        path = os.path.join(run, name)
        if os.path.isfile(path):
            found[name] = open(path, "rb").read()
            continue
        for root, _, files in os.walk(path):
            for file in files:
                full = os.path.join(root, file)
                found[os.path.relpath(full, run)] = open(full, "rb").read()
        best = os.path.join(path, "best")
        found[os.path.join(name, "best")] = os.readlink(best).encode() if os.path.islink(best) else b"missing"
    return found


def progress(run, name):
    """What the stage has written so far: the names under its output path (sample's chunks, a checkpoint...)."""
    path = os.path.join(run, name)
    return sorted(os.path.relpath(os.path.join(r, f), path) for r, ds, fs in os.walk(path) for f in ds + fs)


def kill_then_finish(cmd, run, name, work_s, rng, kills_wanted=KILLS):
    """Start cmd kills_wanted times, each killed with SIGKILL at a random moment of its work (after it has written
    something under run/name), then once more to the end; returns how many runs were killed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    kills = 0
    for _ in range(kills_wanted):
        before = progress(run, name)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until it has started working (written something), then kill at a random moment of its work
        while proc.poll() is None and progress(run, name) == before:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, work_s))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    finish = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]
    return kills


def test_kill_minus_9_at_random_points_then_resume_gives_the_uninterrupted_result(tmp_path, core_url, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same torch threads in this process and in the killed ones
    rng = random.Random(0)
    base = tmp_path / "base"
    for argv in (["data", "--n-train", "12", "--n-val", "4", "--n-test", "4"], ["tokenizer", "--vocab-size", "400"],
                 ["baselines", "--alone-runs", "3"]):
        assert exectune.main(command(base, core_url, argv)[2:]) == 0
    for name, argv, outputs in STAGES:
        straight, killed = tmp_path / f"{name}-straight", tmp_path / f"{name}-killed"
        shutil.copytree(base, straight, symlinks=True)
        shutil.copytree(base, killed, symlinks=True)
        start = time.monotonic()
        assert exectune.main(command(straight, core_url, argv)[2:]) == 0
        kills = kill_then_finish(command(killed, core_url, argv), killed, name, time.monotonic() - start, rng)
        assert kills >= 1, f"{name}: every run finished before its kill: the test killed nothing"
        assert snapshot(killed, outputs) == snapshot(straight, outputs), f"{name}: resumed outputs differ"
        base = straight   # the next stage starts from this one's outputs


def test_kill_minus_9_during_sft_from_a_pretrained_guide_then_resume(tmp_path, monkeypatch, fake):
    """`sft --init hf:<dir>` with a tiny random Qwen2 on GSM8K-format problems, against the scripted GSM8K server."""
    if os.environ.get("EXECTUNE_REQUIRE_DEV") == "1":   # see test_hf.py: .ci/run must run this, never skip it
        import transformers  # noqa: F401
    else:
        pytest.importorskip("transformers")
    from test_gsm8k_recipe import gsm8k_answer, gsm8k_dir
    from test_hf import tiny_hf
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    url = fake(answering(gsm8k_answer)).url + "/v1"
    guide = str(tmp_path / "qwen2-tiny")
    tiny_hf("qwen2", guide, tie=True, max_len=512)
    base = tmp_path / "base"
    data = gsm8k_dir(str(tmp_path / "gsm8k"), n_train=16, n_test=4)
    for argv in (["data", "--family", "gsm8k", "--data-dir", data, "--n-val", "4", "--n-test", "4"],
                 ["sample", "--k", "3", "--m", "1"]):
        assert exectune.main(command(base, url, argv)[2:]) == 0
    argv = ["sft", "--data", "accepted", "--init", f"hf:{guide}", "--steps", "6", "--batch-size", "2",
            "--lr", "1e-3", "--warmup", "1", "--eval-every", "2", "--max-seq-len", "256", "--no-compile"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(base, straight, symlinks=True)
    shutil.copytree(base, killed, symlinks=True)
    start = time.monotonic()
    assert exectune.main(command(straight, url, argv)[2:]) == 0
    kills = kill_then_finish(command(killed, url, argv), killed, "sft-accepted", time.monotonic() - start,
                             random.Random(1), kills_wanted=2)   # each start costs seconds here
    assert kills >= 1, "every run finished before its kill: the test killed nothing"
    assert (straight / "sft-accepted" / "best" / "tokenizer.json").exists()   # a Hugging Face checkpoint
    assert snapshot(killed, ["sft-accepted"]) == snapshot(straight, ["sft-accepted"]), "resumed outputs differ"
