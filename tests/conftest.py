"""What several test files share: the repository root on sys.path, a scripted fake HTTP server that records what
reached it, a gate that measures how many requests a server holds at once, and a fixture that runs torch on one
thread."""
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# Tests import the project's top-level modules (model, tasks, ...) from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import exectune  # noqa: E402  (from the root just put on the path)
import sim_core  # noqa: E402


def processes_with(marker: str) -> list:
    """Pids of processes on this machine whose command line holds `marker` (the sandbox tests' survivors)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture
def sandbox_tmp(tmp_path, monkeypatch):
    """Sandbox directories (the fallback's) go under tmp_path/base, checked empty after the test: every test of
    the sandbox files also checks that nothing is left behind."""
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    assert list(base.iterdir()) == [], "a sandbox directory was left behind"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (benchmarks/gpu_check.sh runs them: pytest -m cuda)")


# ---- a scripted fake server: request n gets script[min(n, len - 1)] ----
def reply(text=None):
    """A well-formed reply in the shape of the path that was asked; by default its text echoes the last user
    message. 11 input + 7 output tokens."""
    def action(handler, body):
        content = text if text is not None else "echo: " + body["messages"][-1]["content"]
        if handler.path.endswith("/messages"):
            out = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": content}],
                   "stop_reason": "end_turn", "usage": {"input_tokens": 11, "output_tokens": 7}}
        else:
            out = sim_core.openai_body(body.get("model"), [content], 11, 7)
        send(handler, 200, out)
    return action


ok = reply()


def answering(answer):
    """An action that replies in OpenAI's shape with the text answer(body), its tokens counted as sim_core does:
    a scripted core and teacher for end-to-end runs of the recipe."""
    def action(handler, body):
        text = answer(body)
        prompt_tokens = sim_core.tokens("".join(m["content"] for m in body["messages"]))
        send(handler, 200, sim_core.openai_body(body["model"], [text], prompt_tokens, sim_core.tokens(text)))
    return action


def fail(status, message="boom", headers=None, **error):
    """An error in OpenAI's shape; `error` adds fields to the error object (code=..., type=...)."""
    def action(handler, body):
        send(handler, status, json.dumps({"error": {"type": "x", "message": message, **error}}).encode(), headers)
    return action


def raw(status, payload: bytes, headers=None):
    return lambda handler, body: send(handler, status, payload, headers)


def cut(handler, body):
    handler.close_connection = True  # close the socket without a reply


def hang(seconds):
    def action(handler, body):
        time.sleep(seconds)
        cut(handler, body)
    return action


def send(handler, status, payload, headers=None):
    """sim_core.send_json (payload: a dict, or bytes as they are), for a client that may have hung up."""
    try:
        sim_core.send_json(handler, status, payload, headers)
    except OSError:
        pass  # the client gave up (a timeout test): nobody is left to answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops a burst of connects, which then wait 1 s to retry


class Gate:
    """A server action that holds each request until n are inside at once, then answers with `then`. `most` is the
    largest number that were inside together: the overlap of the requests, counted where it happens, so it does not
    depend on how fast a busy machine runs (a wall-clock threshold does). Fewer than n arriving together (a client
    that sends fewer at once, a server that serves one at a time) breaks the barrier after `timeout` seconds; every
    request is still answered and `most` says how many overlapped."""

    def __init__(self, n, then=ok, timeout=10.0):
        self.barrier, self.then = threading.Barrier(n, timeout=timeout), then
        self.inside = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, handler, body):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            pass  # not n at once: recorded in `most`, which the test checks
        with self.lock:
            self.inside -= 1   # before the answer goes out, so the client's next request cannot be counted with it
        self.then(handler, body)


class Fake:
    """`hits`: (path, headers, body) of each request in arrival order."""

    def __init__(self, script):
        self.script, self.hits, self.lock = list(script), [], threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    n = len(fake.hits)
                    fake.hits.append((self.path, dict(self.headers), body))
                fake.script[min(n, len(fake.script) - 1)](self, body)

            def log_message(self, *args):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    """fake(*script) starts a Fake server (default: always `ok`); every one is stopped after the test."""
    servers = []

    def start(*script):
        servers.append(Fake(script or [ok]))
        return servers[-1]
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and one thread keeps the tests quick on a busy machine."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a tiny run of the recipe against the simulated core, shared by the tests of the stages ----
def cli(run_dir, url, *argv):
    """Run one stage of exectune.py in-process; returns its exit code."""
    return exectune.main([argv[0], "--run", str(run_dir), "--core-url", url, "--concurrency", "8", *argv[1:]])


@pytest.fixture(scope="module")
def core_url():
    server, url = sim_core.start_server()
    yield url + "/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, core_url):
    """data -> tokenizer -> baselines -> sample on a few tasks."""
    run = tmp_path_factory.mktemp("run")
    assert cli(run, core_url, "data", "--n-train", "24", "--n-val", "8", "--n-test", "12", "--n-ood", "6") == 0
    assert cli(run, core_url, "tokenizer") == 0
    assert cli(run, core_url, "baselines", "--alone-runs", "3") == 0
    assert cli(run, core_url, "sample", "--k", "3", "--m", "2", "--keep", "1", "--chunk", "10") == 0
    return run
