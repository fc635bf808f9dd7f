"""A thin, robust HTTP client for a black-box core or teacher: OpenAI chat completions or Anthropic messages.

Every stage of ExecTune talks to the core (acceptance sampling, RL rewards, evaluation); in a real run these are paid
calls that fail, rate-limit and cost money. This client decides whether a run survives a bad minute of the provider,
whether a reward is honest, and what the bill is.

1. One request shape per API. OpenAI: POST `{base}/chat/completions`, Bearer key. Anthropic: POST
   `{base}/v1/messages`, `x-api-key`, `anthropic-version: 2023-06-01`, the system prompt in `system`, `max_tokens`
   always sent. Request params pass through verbatim (defaults temperature=1.0, max_tokens=512, or the client's
   `params`).
2. Retries as the OpenAI and Anthropic SDKs do them. Faults that may clear (connection errors, timeouts, 408, 409,
   429, 5xx, 529) are retried up to `max_retries` times; faults that would repeat (other 4xx, an error object whose
   `code` or `type` says quota or billing such as OpenAI's `insufficient_quota` or Anthropic's `billing_error`, and a
   200 whose body is not the API's shape, which means a wrong `api` or base URL) fail at once. A server's
   `x-should-retry: true|false` overrides that choice. The wait is the server's `retry-after-ms` / `retry-after`
   when it is positive, else exponential backoff with jitter (0.75-1x of base * 2^attempt, capped); a server that
   asks for more than `max_retry_after` seconds (a daily limit, say) is not waited for: the request fails at once.
   Either way the caller gets a CoreError with the status, the server's message and what to do, with every
   configured key scrubbed from it.
3. `chat_many` runs requests on a bounded thread pool (one keep-alive Session per thread) and returns results in input
   order, a CoreError in place of each request that failed for good, so one bad request never loses the others.
4. An optional sqlite cache (WAL, one connection per thread, busy timeout: safe for several processes) keyed by a hash
   of (api, request body, draw): the model and the request, never the key, nor the base URL (a local server on a
   new port each run must still hit its cache). A hit sends nothing, costs 0 and says so
   (`cached=True`). `draw` asks for an independent sample of the same request: it enters the cache key and, for
   OpenAI, the request's `seed` (params' seed, default 0, plus draw). Anthropic has no seed field, so independent
   draws there rely on temperature > 0.
5. Cost is tokens x the model's price (PRICES, or price_in / price_out); an unknown price is None, never 0.
   `dollars(reply)` prices a request even when it came from the cache (what it costs, not what this run paid).
6. Keys and replies are bounded. A key with whitespace or control characters is refused (without echoing it); a
   redirect is never followed, so a key never reaches another address; a reply is read up to MAX_REPLY_BYTES
   (after decompression) within `timeout` seconds in all, however slowly it drips; token counts must be
   non-negative integers below MAX_TOKENS (not booleans), so a cost can neither go negative nor overflow.
7. `python core_client.py --base-url URL --model M [--api anthropic] "message"` checks a key and an endpoint by hand.
"""
import argparse
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import socket
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import requests
from tqdm import tqdm

log = logging.getLogger("core_client")

# $ per million input / output tokens: the one price table, the simulated models' included (docs/world.md §7;
# they mirror Claude 3.5 Haiku / Sonnet). The simulator has no prices of its own.
PRICES: dict[str, tuple[float, float]] = {
    "claude-3-5-haiku": (0.80, 4.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "sim-core": (0.80, 4.0),
    "sim-core-large": (3.0, 15.0),
    "sim-teacher": (3.0, 15.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
}
# A dated or aliased name (claude-3-5-haiku-20241022, gpt-4o-2024-08-06, claude-3-5-haiku-latest) costs what its
# base name costs; any other suffix is another model (gpt-4.1-nano is not gpt-4.1), whose price is unknown.
_VERSION_SUFFIX = re.compile(r"[-@](\d{8}|\d{4}-\d{2}-\d{2}|latest)")
DEFAULT_PARAMS = {"temperature": 1.0, "max_tokens": 512}
ANTHROPIC_VERSION = "2023-06-01"
BACKOFF_BASE_S = 0.5      # first retry waits 0.75-1x this, doubling each time...
BACKOFF_CAP_S = 30.0      # ...up to this
MAX_RETRY_AFTER_S = 60.0  # a server that asks to wait longer than this is not waited for
# Error-object `code` / `type` values that mean the account cannot pay: retrying cannot help (OpenAI, Anthropic).
QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "billing_error"}
KEY_VARS = ("CORE_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
MAX_REPLY_BYTES = 8 << 20  # a chat reply is kilobytes; a larger one is a broken or hostile server
MAX_TOKENS = 10 ** 8       # more tokens than any context holds


@dataclass
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    cost: float | None      # dollars; None when the model's price is unknown; 0.0 for a cache hit
    cached: bool
    latency_s: float        # wall time of the call, retries and waits included
    finish_reason: str | None


class CoreError(Exception):
    """A request that failed for good: HTTP status (None when no response came), the server's message, what to do."""

    def __init__(self, status: int | None, message: str, hint: str):
        self.status, self.message, self.hint = status, _one_line(message), _one_line(hint)
        super().__init__(str(self))

    def __str__(self):
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{where}: {self.message} -> {self.hint}"


class _Transient(CoreError):
    """A fault worth retrying; `wait` is the server's retry-after in seconds (None, or <= 0: it named no wait)."""

    def __init__(self, status, message, hint, wait=None):
        super().__init__(status, message, hint)
        self.wait = wait


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_price(model: str) -> tuple[float, float] | None:
    """$/M (input, output) for a model: its exact name, else its longest known base name plus a date suffix."""
    if model in PRICES:
        return PRICES[model]
    bases = [b for b in PRICES if model.startswith(b) and _VERSION_SUFFIX.fullmatch(model[len(b):])]
    return PRICES[max(bases, key=len)] if bases else None


def retry_after_s(headers) -> float | None:
    """The server's requested wait in seconds from retry-after-ms, else retry-after (seconds or an HTTP date);
    <= 0 for "now" or a date in the past, None when absent or unreadable."""
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None  # an unreadable header: fall back to our own backoff


def should_retry_header(headers) -> bool | None:
    """The server's own verdict, `x-should-retry: true|false`, which both SDKs obey over the status code."""
    value = (headers.get("x-should-retry") or "").strip().lower()
    return {"true": True, "false": False}.get(value)


def _check_messages(messages):
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
                         f"got {_one_line(repr(messages), 120)}")


class _Cache:
    """sqlite store of completions by request hash. One connection per thread; WAL lets readers and a writer (in
    any process) share the file, and the busy timeout waits out another writer's lock instead of failing."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._local = threading.local()
        self._db()  # fail early on an unusable path

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            # Two processes opening a fresh file race to switch it to WAL; SQLite answers the loser "locked"
            # at once, without its busy handler, so the switch is retried here for up to the same 30 s.
            deadline = time.monotonic() + 30
            while True:
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                               "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, finish_reason TEXT)")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01 + random.random() * 0.05)
            self._local.db = db
        return db

    def get(self, key: str):
        try:
            return self._db().execute("SELECT text, input_tokens, output_tokens, finish_reason FROM completions "
                                      "WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:  # the cache only saves money: a broken cache must not fail the call
            log.warning("cache read failed (%s): asking the server", exc)
            return None

    def put(self, key: str, text: str, input_tokens: int, output_tokens: int, finish_reason):
        try:
            self._db().execute("INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?)",
                               (key, text, input_tokens, output_tokens, finish_reason))
        except sqlite3.Error as exc:
            log.warning("cache write failed (%s): the answer is not cached", exc)


class CoreClient:
    def __init__(self, base_url, model, api="openai", api_key=None, concurrency=16, timeout=60, max_retries=6,
                 cache_path=None, price_in=None, price_out=None, progress=None, params=None,
                 backoff_base=BACKOFF_BASE_S, backoff_cap=BACKOFF_CAP_S, max_retry_after=MAX_RETRY_AFTER_S):
        if api not in ("openai", "anthropic"):
            raise ValueError(f"api must be 'openai' or 'anthropic', got {api!r}")
        if not isinstance(base_url, str) or not re.match(r"https?://[^/]", base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model or not isinstance(model, str):
            raise ValueError(f"model must be a non-empty name, got {model!r}")
        if int(concurrency) < 1 or int(max_retries) < 0 or not timeout > 0 or not max_retry_after >= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0, timeout > 0 and max_retry_after >= 0")
        self.base_url, self.model, self.api = base_url.rstrip("/"), model, api
        # the sampling parameters of every request (a call may pass its own on top)
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.concurrency, self.timeout, self.max_retries = int(concurrency), timeout, int(max_retries)
        self.progress = progress  # None: a bar only on a terminal
        self.backoff_base, self.backoff_cap, self.max_retry_after = backoff_base, backoff_cap, max_retry_after
        self.key_var = "ANTHROPIC_API_KEY" if api == "anthropic" else "OPENAI_API_KEY"
        self._key = api_key or os.environ.get("CORE_API_KEY") or os.environ.get(self.key_var) or None
        if self._key is not None and (not isinstance(self._key, str) or re.search(r"[\s\x00-\x1f\x7f]", self._key)):
            raise ValueError(f"the API key (api_key, CORE_API_KEY or {self.key_var}) contains whitespace or control "
                             "characters (a pasted newline?): set it again without them")
        # every key this process could send, longest first (a key that contains another is replaced whole)
        self._secrets = sorted({k for k in [self._key, *map(os.environ.get, KEY_VARS)] if k}, key=len, reverse=True)
        table = model_price(model) or (None, None)
        self.price_in = price_in if price_in is not None else table[0]
        self.price_out = price_out if price_out is not None else table[1]
        self._cache = _Cache(cache_path) if cache_path else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool = None
        self._rng = random.Random()
        self._totals = dict(calls=0, cache_hits=0, requests=0, retries=0, failures=0, input_tokens=0, output_tokens=0)
        if api == "openai":
            self._url = self.base_url + "/chat/completions"
            self._headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        else:
            self._url = self.base_url + "/v1/messages"
            self._headers = {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": self._key} if self._key else {})}

    def __repr__(self):  # never shows the key
        return f"CoreClient({self.base_url!r}, {self.model!r}, api={self.api!r})"

    # ---- public API ----
    def chat(self, messages, draw=0, **params) -> Completion:
        """One completion; raises CoreError when the request fails for good (after retries where they can help)."""
        return self._chat(messages, draw, params, stop=None)

    def _chat(self, messages, draw, params, stop: threading.Event | None) -> Completion:
        _check_messages(messages)
        if not isinstance(draw, int) or draw < 0:
            raise ValueError(f"draw must be an integer >= 0, got {draw!r}")
        params = {**self.params, **params}
        start = time.monotonic()
        self._add(calls=1)
        key = self._cache_key(messages, params, draw)
        hit = self._cache.get(key) if self._cache else None
        if hit:
            self._add(cache_hits=1)
            text, tin, tout, finish = hit
            return Completion(text, tin, tout, 0.0, True, time.monotonic() - start, finish)
        try:
            text, tin, tout, finish = self._read_reply(self._request(self._body(messages, params, draw), stop))
        except CoreError:
            self._add(failures=1)
            raise
        self._add(input_tokens=tin, output_tokens=tout)
        if self._cache:
            self._cache.put(key, text, tin, tout, finish)
        return Completion(text, tin, tout, self._price(tin, tout), False, time.monotonic() - start, finish)

    def chat_many(self, list_of_messages, draws=None, desc="core", **params) -> list:
        """Many completions at once, in input order; an entry that failed for good is its CoreError."""
        list_of_messages = list(list_of_messages)
        draws = [0] * len(list_of_messages) if draws is None else list(draws)
        if len(draws) != len(list_of_messages):
            raise ValueError(f"draws has {len(draws)} entries for {len(list_of_messages)} requests")
        for messages in list_of_messages:  # a malformed input is the caller's bug: say so before spending anything
            _check_messages(messages)

        stop = threading.Event()  # set when the caller is interrupted: requests waiting to retry give up

        def one(i):
            try:
                return self._chat(list_of_messages[i], draws[i], params, stop)
            except CoreError as exc:
                return exc
            except Exception as exc:  # a bug must not throw away the other results of a long run
                self._add(failures=1)
                return self._error(None, f"{type(exc).__name__}: {exc}", "unexpected error in core_client")

        results = [None] * len(list_of_messages)
        disable = None if self.progress is None else not self.progress
        futures = {self._executor().submit(one, i): i for i in range(len(results))}
        try:
            with tqdm(total=len(results), desc=desc, disable=disable, dynamic_ncols=True) as bar:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(1)
        except BaseException:  # Ctrl-C: drop the queued requests and stop the retries instead of waiting them out
            stop.set()
            for future in futures:
                future.cancel()
            raise
        return results

    def close(self):
        """Stop the worker threads (their keep-alive connections close with them)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self) -> dict:
        """Running totals. Tokens and dollars count what the server billed (cache hits are free and not included)."""
        with self._lock:
            totals = dict(self._totals)
        totals["dollars"] = self._price(totals["input_tokens"], totals["output_tokens"])
        return totals

    def dollars(self, reply: Completion) -> float | None:
        """What this request costs at the model's price (None if unknown), cache hit or not: reply.cost is what
        this run paid (0 for a hit); this is what the request is worth, for rewards, acceptance and evaluation."""
        return self._price(reply.input_tokens, reply.output_tokens)

    # ---- internals ----
    def _add(self, **counts):
        with self._lock:
            for name, n in counts.items():
                self._totals[name] += n

    def _price(self, input_tokens, output_tokens) -> float | None:
        if self.price_in is None or self.price_out is None:
            return None
        return (input_tokens * self.price_in + output_tokens * self.price_out) / 1e6

    def _cache_key(self, messages, params, draw) -> str:
        # What the server answers depends on the model and the request, not on where it listens: the base URL is
        # left out. The draw stays in, because an Anthropic body carries no seed.
        request = {"api": self.api, "body": self._body(messages, params, draw), "draw": draw}
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _body(self, messages, params, draw) -> dict:
        if self.api == "openai":
            return {"model": self.model, "messages": messages, **params, "seed": params.get("seed", 0) + draw}
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body = {"model": self.model, "messages": [m for m in messages if m["role"] != "system"],
                **{k: v for k, v in params.items() if k != "seed"}}  # the Messages API has no seed and rejects it
        if system:
            body["system"] = system
        return body

    def _executor(self) -> ThreadPoolExecutor:
        # One pool for the client's life: its threads keep their Sessions, so connections stay open between batches.
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="core")
            return self._pool

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, body, stop: threading.Event | None) -> dict:
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Transient as fault:
                if attempt == self.max_retries:
                    hint = fault.hint + (f" (gave up after {attempt} retries)" if attempt else "")
                    raise CoreError(fault.status, fault.message, hint) from None
                if fault.wait is not None and fault.wait > self.max_retry_after:
                    raise CoreError(fault.status, fault.message, f"the server asks to wait {fault.wait:.0f} s, more "
                                    f"than the {self.max_retry_after:g} s this client waits: try again later") from None
                wait = fault.wait if fault.wait is not None and fault.wait > 0 else self._backoff(attempt)
                self._add(retries=1)
                log.info("%s: retry %d in %.2f s after %s", self.model, attempt + 1, wait, fault)
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(wait):
                    raise CoreError(fault.status, fault.message, "cancelled: the caller was interrupted") from None

    def _backoff(self, attempt) -> float:
        """base * 2^attempt (capped), less up to a quarter at random so that clients that failed together spread."""
        return min(self.backoff_cap, self.backoff_base * 2 ** attempt) * (1 - 0.25 * self._rng.random())

    def _post(self, body) -> dict:
        """One HTTP attempt: the parsed JSON reply, or a _Transient / CoreError."""
        self._add(requests=1)
        try:
            response = self._session().post(self._url, json=body, headers=self._headers, timeout=self.timeout,
                                            allow_redirects=False, stream=True)
            content = self._read_bounded(response)
        except requests.Timeout:
            raise self._error(None, f"no answer within {self.timeout} s",
                              f"is the server at {self.base_url} overloaded? raise timeout if answers are long",
                              retry=True)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise self._error(None, _connection_problem(exc), f"is the server at {self.base_url} running?", retry=True)
        except requests.RequestException as exc:
            raise self._error(None, f"{type(exc).__name__}: {exc}", f"check the base URL {self.base_url}")
        status = response.status_code
        if 300 <= status < 400:       # the key must not follow a redirect to wherever it points
            raise self._error(status, f"the server redirects to {response.headers.get('location')!r}",
                              "set the base URL to the final address (redirects are not followed)")
        if 200 <= status < 300:
            try:
                return json.loads(content)
            except ValueError:
                raise self._error(status, f"the reply is not JSON: {content[:300]!r}", self._shape_hint())
        message, kinds = _server_error(response, content)
        retry = status in (408, 409, 429) or 500 <= status <= 599
        if kinds & QUOTA_CODES:
            retry, hint = False, (f"the account behind {self.key_var} (or CORE_API_KEY) is out of quota or credit, "
                                  "or over its spend limit: check its billing")
        elif status == 429:
            hint = "rate limited: lower concurrency or wait"
        elif retry:
            hint = f"the server at {self.base_url} is failing or overloaded: try again later"
        else:
            hint = self._status_hint(status)
        verdict = should_retry_header(response.headers)
        retry = retry if verdict is None else verdict
        raise self._error(status, message, hint, retry=retry, wait=retry_after_s(response.headers))

    def _read_bounded(self, response) -> bytes:
        """The decompressed body, at most MAX_REPLY_BYTES, read within `timeout` seconds from the request's start."""
        deadline, parts, size = time.monotonic() + self.timeout, [], 0
        # a read waits for a whole chunk, and a server that drips a byte at a time never trips the socket timeout:
        # at the deadline a watchdog closes the connection under the read
        watchdog = threading.Timer(self.timeout, _hang_up, (response,))
        watchdog.daemon = True
        watchdog.start()
        try:
            for chunk in response.iter_content(64 << 10):
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise self._error(response.status_code, f"the reply is longer than {MAX_REPLY_BYTES} bytes",
                                      f"is {self.base_url} a chat-completions server?")
                if time.monotonic() > deadline:
                    raise requests.Timeout()
                parts.append(chunk)
        except (requests.RequestException, ValueError, OSError, AttributeError):
            if time.monotonic() > deadline:
                raise requests.Timeout() from None
            raise
        finally:
            watchdog.cancel()
            response.close()
        if time.monotonic() > deadline:
            raise requests.Timeout()
        return b"".join(parts)

    def _read_reply(self, reply) -> tuple[str, int, int, str | None]:
        """(text, input tokens, output tokens, finish reason) from a 200 body; a wrong shape is a CoreError."""
        try:
            if self.api == "openai":
                choice = reply["choices"][0]
                text, finish = choice["message"]["content"] or "", choice.get("finish_reason")
                tin, tout = reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"]
            else:
                text = "".join(b["text"] for b in reply["content"] if b.get("type") == "text")
                finish = reply.get("stop_reason")
                tin, tout = reply["usage"]["input_tokens"], reply["usage"]["output_tokens"]
            if not (isinstance(text, str) and all(type(n) is int and 0 <= n < MAX_TOKENS for n in (tin, tout))):
                raise TypeError("wrong field types")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._error(200, f"the reply is not in the {self.api} shape: {json.dumps(reply)}",
                              self._shape_hint()) from None
        return text, tin, tout, finish

    def _shape_hint(self) -> str:
        return f"is {self.base_url} an {self.api} endpoint? check --api and the base URL"

    def _status_hint(self, status) -> str:
        key_fix = f"set {self.key_var} (or CORE_API_KEY)"
        if status == 401:
            return f"check the key: {key_fix}" if self._key else f"no key was sent: {key_fix}"
        if status == 403:
            return f"the key in {self.key_var} (or CORE_API_KEY) may not use model {self.model!r}: check its access"
        if status == 404:
            slash_v1 = "end in /v1" if self.api == "openai" else "not end in /v1"
            return (f"check the model name {self.model!r} and the base URL {self.base_url} "
                    f"(it should usually {slash_v1})")
        if status == 413:
            return "the request is too large: shorten the messages"
        return "the server refused the request: check the messages and params"

    def _error(self, status, message, hint, retry=False, wait=None) -> CoreError:
        """The one place a failure is put into words: every configured key is scrubbed from the whole text, before
        it is cut to one line (some servers echo the key they received, and a key may be short)."""
        for secret in self._secrets:
            message, hint = str(message).replace(secret, "***"), str(hint).replace(secret, "***")
        return _Transient(status, message, hint, wait) if retry else CoreError(status, message, hint)


def _hang_up(response):
    """Close a response's connection from another thread: a shutdown wakes a read blocked on its socket."""
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    response.close()


def _server_error(response, content: bytes) -> tuple[str, set]:
    """(message, {code, type}) from OpenAI's or Anthropic's error object; without one, the body and no kinds."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        kinds = {v for v in (error.get("code"), error.get("type")) if isinstance(v, str)}
        return str(error.get("message") or error), kinds
    if isinstance(error, str):
        return error, set()
    return content.decode("utf-8", "replace") or response.reason or "(empty body)", set()


def _connection_problem(exc) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "RemoteDisconnected" in text or "aborted" in text.lower() or "reset" in text.lower():
        return "the server closed the connection without a full reply"
    if "resolve" in text.lower() or "name or service" in text.lower():
        return "the host name does not resolve"
    return f"connection failed: {text}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Send one message to a core or teacher: checks a key and an "
                                                 "endpoint. The key comes from CORE_API_KEY, ANTHROPIC_API_KEY or "
                                                 "OPENAI_API_KEY, never from the command line.")
    parser.add_argument("message")
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1 (openai) or "
                                                          "https://api.anthropic.com (anthropic)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--system", help="optional system prompt")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_PARAMS["max_tokens"])
    parser.add_argument("--temperature", type=float, default=DEFAULT_PARAMS["temperature"])
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--max-retries", type=int, default=2, help="fewer than the library's 6: answer a person fast")
    parser.add_argument("--price-in", type=float, help="$ per million input tokens (overrides the table)")
    parser.add_argument("--price-out", type=float, help="$ per million output tokens (overrides the table)")
    args = parser.parse_args(argv)
    if args.max_tokens < 1 or args.max_retries < 0 or args.timeout <= 0:
        parser.error("need --max-tokens >= 1, --max-retries >= 0 and --timeout > 0")
    try:
        client = CoreClient(args.base_url, args.model, api=args.api, timeout=args.timeout,
                            max_retries=args.max_retries, price_in=args.price_in, price_out=args.price_out)
    except ValueError as exc:
        parser.error(str(exc))
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}]
    try:
        reply = client.chat(messages, max_tokens=args.max_tokens, temperature=args.temperature)
    except CoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cost = "unknown (no price for this model: pass --price-in and --price-out)" if reply.cost is None \
        else f"${reply.cost:.6f}"
    print(reply.text)
    print(f"-- {args.model}: {reply.input_tokens} input + {reply.output_tokens} output tokens, cost {cost}, "
          f"finish {reply.finish_reason}, {reply.latency_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
