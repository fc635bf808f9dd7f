"""The offline stand-in for black-box LLMs: a cheap core, a large core and a teacher behind a real HTTP API.

1. A standard-library threaded HTTP server speaks OpenAI chat completions (POST /v1/chat/completions, GET /v1/models)
   and Anthropic messages (POST /v1/messages), errors in each API's own shape. --latency-ms delays every request and
   --fail-rate answers a share of them with 429 (retry-after-ms 50), 500, 529 or a cut connection, so a client's
   concurrency and retries are tested for real. `openai_body` and `send_json` write its replies, and the scripted
   servers of the tests and benchmarks answer with them too, so every fake speaks the same OpenAI shape.
2. `complete(model, messages, ...)` is what a request gets: it reads the problem and strategy back from the message
   text (strategy_format.parse_core_request) and hands a mathsim problem to sim_math.py's models, a codesim problem
   (codesim.is_codesim_problem) to sim_code.py, where the core replies with a real Python function (graded later by
   running it, never here) and the teacher with a codesim strategy. A problem neither can read is answered with
   HTTP 400. `tokens` counts a text's tokens as the usage of every reply does.
3. Randomness is a pure function of (model, messages, temperature, seed, choice index): the same request gets the
   same reply, another seed draws again. At temperature 0 the seed and choice index are ignored (greedy decoding).
4. `--selfcheck` runs the real prompt path over HTTP on seeded test tasks and prints one JSON line.
"""
import argparse
import dataclasses
import hashlib
import json
import math
import random
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

import codesim
import families
import sim_code
import sim_math
from core_client import model_price
from mathsim import UnreadableProblem
from sim_math import CHEAP, LARGE, MODELS, TEACHER, TeacherModel, core_model
from strategy_format import asks_to_name_quantities, extract_strategy, parse_core_request, parse_teacher_request


# ---------------------------------------------------------------------------------------------------------------
# What a request gets.
def _draw_seed(model: str, messages: list, temperature: float, seed, index: int) -> int:
    if temperature == 0:
        seed, index = None, 0                  # greedy decoding: one answer whatever the seed
    key = json.dumps([model, messages, float(temperature), seed, index], ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def complete(model: str, messages: list, temperature: float = 1.0, seed=None, index: int = 0,
             teacher: TeacherModel = TEACHER) -> str:
    """The reply text of `model` to OpenAI-style messages (raises ValueError / UnreadableProblem on bad input);
    `teacher` answers for the teacher's name (the server's, with its --teacher-echo)."""
    rng = random.Random(_draw_seed(model, messages, temperature, seed, index))
    if model == TEACHER.name:
        problem = parse_teacher_request(messages)
        if codesim.is_codesim_problem(problem):
            return sim_code.teacher_reply(problem, teacher, rng)
        return sim_math.teacher_reply(problem, teacher, rng, asks_to_name_quantities(messages))
    problem, strategy = parse_core_request(messages)
    if codesim.is_codesim_problem(problem):         # codesim (docs/world.md §6): the core writes a real function
        return sim_code.core_reply(problem, strategy, core_model(model), rng)
    return sim_math.core_reply(problem, strategy, core_model(model), rng)


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------------------------------------------------------
# HTTP.
class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_ERROR_TYPES = {400: ("invalid_request_error", "invalid_request_error"),
                413: ("invalid_request_error", "request_too_large"), 404: ("invalid_request_error",
                "not_found_error"), 429: ("rate_limit_error", "rate_limit_error"), 500: ("server_error", "api_error"),
                529: ("server_error", "overloaded_error")}


def _text(content, where: str) -> str:
    """Message content as text: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and isinstance(b.get("text"), str) for b in content):
        return "".join(b["text"] for b in content)
    raise ApiError(400, "invalid_content", f"{where} must be a string or a list of text blocks")


def _number(body: dict, key: str, default, low, high, integer=False):
    v = body.get(key, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not low <= v <= high:
        raise ApiError(400, "invalid_value", f"'{key}' must be {'an integer' if integer else 'a number'} "
                                             f"between {low} and {high}")
    return v


def _respond(api: str, raw: bytes, teacher: TeacherModel = TEACHER) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):     # RecursionError: nested too deep to be a request
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    for key in ("model", "messages") + (("max_tokens",) if api == "anthropic" else ()):
        if key not in body:
            raise ApiError(400, "missing_field", f"missing required field '{key}'")
    model, raw_messages = body["model"], body["messages"]
    if not isinstance(model, str):
        raise ApiError(400, "invalid_value", "'model' must be a string")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ApiError(400, "invalid_value", "'messages' must be a non-empty list")
    messages = [{"role": "system", "content": _text(body["system"], "'system'")}] if body.get("system") else []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ApiError(400, "missing_field", f"messages[{i}] needs a 'role' and a 'content'")
        messages.append({"role": m["role"], "content": _text(m["content"], f"messages[{i}].content")})
    temperature = _number(body, "temperature", 1.0, 0, 2)
    seed = _number(body, "seed", None, -2 ** 63, 2 ** 64, integer=True)
    n = _number(body, "n", 1, 1, 128, integer=True) if api == "openai" else 1
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": limit}, "max_tokens", None, 1, 10 ** 7, integer=True)
    if model not in MODELS:
        raise ApiError(404, "model_not_found", f"model {model!r} does not exist; this server has "
                                               f"{', '.join(MODELS)}")
    texts = []
    try:
        for i in range(n):
            texts.append(complete(model, messages, temperature, seed, i, teacher))
    except UnreadableProblem as e:
        raise ApiError(400, "unreadable_problem", f"cannot read the problem: {e}") from None
    except ValueError as e:
        raise ApiError(400, "invalid_prompt", f"cannot find the problem in the messages: {e}") from None
    cut = [max_tokens is not None and tokens(t) > max_tokens for t in texts]
    texts = [t[:max_tokens * 4] if c else t for t, c in zip(texts, cut)]
    prompt_tokens, out_tokens = tokens("".join(m["content"] for m in messages)), sum(tokens(t) for t in texts)
    ident = hashlib.blake2b(raw, digest_size=12).hexdigest()
    if api == "anthropic":
        return {"id": f"msg_{ident}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": texts[0]}], "stop_reason": "max_tokens" if cut[0] else "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": out_tokens}}
    return openai_body(model, texts, prompt_tokens, out_tokens, cut, ident)


def openai_body(model: str, texts: list, prompt_tokens: int, completion_tokens: int, cut: list | None = None,
                ident: str = "0") -> dict:
    """An OpenAI chat.completion body: one choice per text, finish_reason "length" where cut says it was cut off."""
    cut = cut or [False] * len(texts)
    return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": "length" if c else "stop"} for i, (t, c) in enumerate(zip(texts, cut))],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def send_json(handler: BaseHTTPRequestHandler, status: int, payload, headers: dict | None = None):
    """Write one reply on a request handler: payload is a dict sent as JSON, or bytes sent as they are."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


FAILURES = ("429", "500", "529", "cut")
MAX_BODY_BYTES = 4 << 20          # a chat request is kilobytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"             # keep-alive, as real APIs do
    server_version = "sim_core/1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK add ~40 ms per reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    timeout = 30      # seconds a connection may stall (a short body, an idle keep-alive) before it is dropped

    def log_message(self, *args):
        pass

    def _error(self, api: str, status: int, code: str, message: str, headers: dict | None = None):
        kind = _ERROR_TYPES[status][api == "anthropic"]
        payload = ({"type": "error", "error": {"type": kind, "message": message}} if api == "anthropic"
                   else {"error": {"message": message, "type": kind, "code": code}})
        send_json(self, status, payload, headers)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if not path.endswith("/models"):
            return self._error("openai", 404, "not_found", f"no route GET {self.path}")
        # the teacher's entry names its echo rate, so a run can record which offline world made its data
        send_json(self, 200, {"object": "list", "has_more": False, "data": [
            {"id": m, "object": "model", "type": "model", "display_name": m, "created": 0, "owned_by": "sim_core"}
            | ({"teacher_echo": self.server.teacher.echo} if m == TEACHER.name else {}) for m in MODELS]})

    def do_POST(self):
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self.close_connection = True          # the body is not read: the connection cannot be reused
            return self._error("openai", 413, "request_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(int(length)) if length.isdigit() else b""
        path = self.path.split("?")[0].rstrip("/")
        api = "anthropic" if path.endswith("/messages") else "openai" if path.endswith("/chat/completions") else None
        if api is None:
            return self._error("openai", 404, "not_found", f"no route POST {self.path}")
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        failure = self.server.draw_failure()
        if failure == "cut":
            self.close_connection = True      # hang up without a reply
        elif failure == "429":
            self._error(api, 429, "rate_limit_exceeded", "Rate limit reached (simulated); retry after 50 ms.",
                        {"retry-after-ms": "50", "Retry-After": "0"})
        elif failure:
            self._error(api, int(failure), "server_error" if failure == "500" else "overloaded",
                        "Internal error (simulated)." if failure == "500" else "Overloaded (simulated).")
        else:
            try:
                send_json(self, 200, _respond(api, raw, self.server.teacher))
            except ApiError as e:
                self._error(api, e.status, e.code, e.message)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128                  # a burst of concurrent connects must not be dropped

    def __init__(self, address, latency_ms: float = 0, fail_rate: float = 0.0, seed: int = 0,
                 teacher: TeacherModel = TEACHER):
        if not 0 <= fail_rate <= 1 or latency_ms < 0 or not 0 <= teacher.echo <= 1:
            raise ValueError("fail_rate and the teacher's echo must be in [0, 1] and latency_ms >= 0")
        super().__init__(address, _Handler)
        self.latency_s, self.fail_rate, self.teacher = latency_ms / 1000, fail_rate, teacher
        self._rng, self._lock = random.Random(seed), threading.Lock()

    def draw_failure(self) -> str | None:
        """Random per request (not a function of the body), so a retried request can succeed."""
        if self.fail_rate <= 0:
            return None
        with self._lock:
            return self._rng.choice(FAILURES) if self._rng.random() < self.fail_rate else None

    def shutdown(self):
        """Stop serving and close the listening socket."""
        super().shutdown()
        self.server_close()


def start_server(host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0, fail_rate: float = 0.0,
                 seed: int = 0, teacher: TeacherModel = TEACHER) -> tuple:
    """Serve in a daemon thread; returns (server, "http://HOST:PORT"). Paths are matched by their ending, so both
    that URL and URL + "/v1" work as an OpenAI or an Anthropic base URL."""
    server = SimServer((host, port), latency_ms, fail_rate, seed, teacher)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


# ---------------------------------------------------------------------------------------------------------------
def selfcheck(n: int, seed: int = 0, level: int = 2, family: str = "mathsim", samples: int = 32,
              teacher: TeacherModel = TEACHER) -> dict:
    """The real prompt path over HTTP: each configuration's accuracy (graded as the recipe grades: for codesim, by
    running the code), mean tokens and dollars per task, and the model's own success probability beside it: mathsim's
    exact_success; for codesim, p_bug_free ("exact") and the pass rate of `samples` functions sampled per task and
    run in the sandbox ("sampled"). For mathsim, the teacher's echo share too (sim_math.echo_share)."""
    rules = families.get(family)      # the recipe's grading, so the self-check measures what the table will
    server, url = start_server(teacher=teacher)
    local = threading.local()
    test = rules.generate(n, seed, "test", level)

    def call(model, messages):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        r = local.session.post(url + "/v1/chat/completions", timeout=60, json={
            "model": model, "messages": messages, "temperature": 1.0, "seed": seed, "max_tokens": 512})
        r.raise_for_status()
        out = r.json()
        price_in, price_out = model_price(model)
        usage = out["usage"]
        dollars = (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6
        return out["choices"][0]["message"]["content"], usage["prompt_tokens"], usage["completion_tokens"], dollars

    def run(model, strategies):
        return list(pool.map(lambda ts: call(model, rules.core_messages(ts[0].problem, ts[1])), zip(test, strategies)))

    def summary(replies, strategies, model, extra=None):
        extra = extra or [(0, 0, 0.0)] * n
        out = {"accuracy": round(sum(rules.grade(test, [r[0] for r in replies])) / n, 4)}
        if family == "codesim":
            items = [(t.problem, s) for t, s in zip(test, strategies)]
            out["exact"] = round(sum(sim_code.p_bug_free(p, s, core_model(model)) for p, s in items) / n, 4)
            sampled = sim_code.success_rates(items, core_model(model), n=samples, seed=seed)
            out["sampled"] = round(sum(sampled) / n, 4)
        else:
            exact = [sim_math.exact_success(t.problem, s, model) for t, s in zip(test, strategies)]
            out["exact"] = round(sum(exact) / n, 4)
        return dict(out, input_tokens=round(sum(r[1] + e[0] for r, e in zip(replies, extra)) / n, 1),
                    output_tokens=round(sum(r[2] + e[1] for r, e in zip(replies, extra)) / n, 1),
                    dollars=round(sum(r[3] + e[2] for r, e in zip(replies, extra)) / n, 7))

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        alone, canonical = [None] * n, [rules.canonical_strategy(t) for t in test]
        cheap, large, with_canonical = run(CHEAP.name, alone), run(LARGE.name, alone), run(CHEAP.name, canonical)
        taught = list(pool.map(lambda t: call(TEACHER.name, rules.teacher_messages(t.problem)), test))
        strategies = [extract_strategy(r[0]) or r[0].strip() for r in taught]
        with_teacher = run(CHEAP.name, strategies)
    seconds = time.perf_counter() - start
    server.shutdown()
    taught_row = summary(with_teacher, strategies, CHEAP.name, [(r[1], r[2], r[3]) for r in taught])
    taught_row["teacher_dollars"] = round(sum(r[3] for r in taught) / n, 7)
    taught_row["valid"] = round(sum(rules.parse_strategy(s).valid for s in strategies) / n, 4)
    if family == "mathsim":
        echoed, eligible = map(sum, zip(*(sim_math.echo_share(t.problem, s) for t, s in zip(test, strategies))))
        taught_row.update(echo=teacher.echo, echo_share=round(echoed / max(1, eligible), 4))
    return {"family": family, "n": n, "seed": seed, "level": level, "cheap_alone": summary(cheap, alone, CHEAP.name),
            "large_alone": summary(large, alone, LARGE.name),
            "cheap_canonical": summary(with_canonical, canonical, CHEAP.name),
            "cheap_teacher": taught_row, "requests_per_s": round(5 * n / seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Simulated cheap core, large core and teacher behind an "
                                                 "OpenAI- and Anthropic-shaped HTTP API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added delay per request")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests that fail (429/500/529/cut)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the failure draws; of the tasks in --selfcheck")
    parser.add_argument("--selfcheck", action="store_true", help="run the prompt path over HTTP, print one JSON line")
    parser.add_argument("--n", type=int, default=500, help="tasks for --selfcheck")
    parser.add_argument("--level", type=int, default=2, choices=[1, 2], help="mathsim level for --selfcheck")
    parser.add_argument("--family", default="mathsim", choices=["mathsim", "codesim"], help="tasks for --selfcheck")
    parser.add_argument("--teacher-echo", type=float, default=TEACHER.echo,
                        help=f"the teacher's echo rate (docs/world.md §5; default {TEACHER.echo}, 0: the world before "
                             "the habit)")
    args = parser.parse_args(argv)
    if not 0 <= args.fail_rate <= 1:
        parser.error(f"--fail-rate must be between 0 and 1, got {args.fail_rate}")
    if not 0 <= args.teacher_echo <= 1:
        parser.error(f"--teacher-echo must be between 0 and 1, got {args.teacher_echo}")
    teacher = dataclasses.replace(TEACHER, echo=args.teacher_echo)
    if args.latency_ms < 0:
        parser.error(f"--latency-ms must be >= 0, got {args.latency_ms}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if args.selfcheck:
        if args.n < 1:
            parser.error(f"--n must be >= 1, got {args.n}")
        print(json.dumps(selfcheck(args.n, args.seed, args.level, args.family, teacher=teacher)), flush=True)
        return 0
    try:
        server = SimServer((args.host, args.port), args.latency_ms, args.fail_rate, args.seed, teacher)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
