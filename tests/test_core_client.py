"""core_client against live local servers: small scripted fakes for precise faults, sim_core for the real shapes."""
import json
import logging
import math
import os
import subprocess
import sys
import time

import pytest

import core_client
import mathsim
import sim_core
from conftest import ROOT, Gate, cut, fail, hang, ok, raw
from core_client import Completion, CoreClient, CoreError, model_price, retry_after_s

FAST = dict(backoff_base=0.01, backoff_cap=0.05, progress=False)  # real retries, short waits
USER = [{"role": "user", "content": "hello"}]


# ---- retries ----
def test_retry_after_ms_is_waited_for(fake):
    server = fake(fail(429, "slow down", {"retry-after-ms": "300"}), ok)
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    start = time.monotonic()
    reply = client.chat(USER)
    assert time.monotonic() - start >= 0.3
    assert reply.text == "echo: hello" and len(server.hits) == 2 and client.stats()["retries"] == 1


def test_retry_after_header_forms():
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "2"}) == 2.0
    in_5s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 3.5 < retry_after_s({"retry-after": in_5s}) <= 5.0
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None
    an_hour_ago = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 3600))
    assert retry_after_s({"retry-after": an_hour_ago}) < 0 and retry_after_s({"retry-after": "0"}) == 0


AN_HOUR_AGO = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 3600))


@pytest.mark.parametrize("headers", [{}, {"retry-after": "0"}, {"retry-after-ms": "0"}, {"retry-after": "-3"},
                                     {"retry-after": AN_HOUR_AGO}], ids=["absent", "0", "0ms", "negative", "past"])
def test_no_usable_retry_after_means_backoff_not_an_instant_retry(fake, headers):
    server = fake(fail(429, "slow down", headers), fail(503, "busy", headers), ok)
    client = CoreClient(server.url + "/v1", "sim-core", backoff_base=0.2, backoff_cap=10, progress=False)
    start = time.monotonic()
    assert client.chat(USER).text == "echo: hello"
    # two backoffs, 0.75-1x of 0.2 s and of 0.4 s
    assert time.monotonic() - start >= 0.75 * (0.2 + 0.4) and client.stats()["retries"] == 2


def test_backoff_doubles_up_to_its_cap_with_jitter():
    client = CoreClient("http://127.0.0.1:9/v1", "sim-core", backoff_base=1.0, backoff_cap=4.0)
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 4.0)]:
        waits = [client._backoff(attempt) for _ in range(200)]
        assert all(0.75 * full <= w <= full for w in waits) and len(set(waits)) > 100


def test_a_retry_after_beyond_the_ceiling_fails_at_once(fake):
    """A server that asks for 61 s (a daily limit, say) is not waited for: one clear error, one request."""
    server = fake(fail(429, "daily token limit reached", {"retry-after": "61"}), ok)
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    assert client.max_retry_after == 60
    start = time.monotonic()
    with pytest.raises(CoreError) as info:
        client.chat(USER)
    assert time.monotonic() - start < 5 and len(server.hits) == 1 and info.value.status == 429
    assert "daily token limit" in info.value.message and "wait 61 s" in info.value.hint
    server = fake(fail(429, "slow down", {"retry-after": "0.1"}), ok)  # within a (lower) ceiling: waited for
    client = CoreClient(server.url + "/v1", "sim-core", max_retry_after=0.2, **FAST)
    assert client.chat(USER).text == "echo: hello" and len(server.hits) == 2


@pytest.mark.parametrize("first,retried", [(fail(400, "try again", {"x-should-retry": "true"}), True),
                                           (fail(500, "do not", {"x-should-retry": "false"}), False),
                                           (fail(429, "slow down", {"x-should-retry": "false"}), False)],
                         ids=["400-true", "500-false", "429-false"])
def test_x_should_retry_overrides_the_status(fake, first, retried):
    server = fake(first, ok)
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    if retried:
        assert client.chat(USER).text == "echo: hello" and len(server.hits) == 2
    else:
        with pytest.raises(CoreError):
            client.chat(USER)
        assert len(server.hits) == 1


def test_5xx_and_529_retried_then_succeed(fake):
    server = fake(fail(500), fail(529, "overloaded"), fail(503), ok)
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    assert client.chat(USER).text == "echo: hello"
    assert len(server.hits) == 4 and client.stats()["retries"] == 3 and client.stats()["failures"] == 0


def test_gives_up_after_max_retries_with_the_last_status(fake):
    server = fake(fail(500, "database on fire"))
    client = CoreClient(server.url + "/v1", "sim-core", max_retries=2, **FAST)
    with pytest.raises(CoreError) as info:
        client.chat(USER)
    assert len(server.hits) == 3 and info.value.status == 500
    assert "database on fire" in str(info.value) and "after 2 retries" in str(info.value)
    assert client.stats()["failures"] == 1


@pytest.mark.parametrize("api,var", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_401_fails_at_once_naming_the_key_variable(fake, api, var):
    server = fake(fail(401, "invalid x-api-key"))
    client = CoreClient(server.url + ("/v1" if api == "openai" else ""), "m", api=api, api_key="sk-test-0123", **FAST)
    with pytest.raises(CoreError) as info:
        client.chat(USER)
    assert len(server.hits) == 1 and info.value.status == 401
    assert var in str(info.value) and "invalid x-api-key" in str(info.value) and "\n" not in str(info.value)


ANTHROPIC_BILLING = json.dumps({"type": "error", "error": {"type": "billing_error",
                                                            "message": "Your credit balance is too low."}}).encode()


@pytest.mark.parametrize("api,answer", [
    ("openai", fail(429, "You exceeded your current quota, please check your plan and billing details.",
                    type="insufficient_quota", code="insufficient_quota")),
    ("openai", fail(429, "Request denied.", type="requests", code="insufficient_quota")),   # the code decides
    ("anthropic", raw(402, ANTHROPIC_BILLING)),
    ("anthropic", raw(429, ANTHROPIC_BILLING))], ids=["openai-quota", "openai-code-only", "anthropic-402",
                                                       "anthropic-429"])
def test_quota_and_billing_errors_are_not_retried(fake, api, answer):
    server = fake(answer, ok)
    client = CoreClient(server.url + ("/v1" if api == "openai" else ""), "sim-core", api=api, **FAST)
    with pytest.raises(CoreError) as info:
        client.chat(USER)
    assert len(server.hits) == 1 and info.value.status in (402, 429) and "billing" in info.value.hint


def test_a_rate_limit_that_mentions_quota_is_still_retried(fake):
    """Only the error object's code / type says "out of money", not a word in its message."""
    server = fake(fail(429, "Rate limit reached: 10,000 tokens per minute quota. Please try again in 20ms.",
                       type="tokens", code="rate_limit_exceeded"), ok)
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    assert client.chat(USER).text == "echo: hello" and len(server.hits) == 2


@pytest.mark.parametrize("status,hint_word", [(400, "messages"), (403, "access"), (404, "model name"),
                                              (413, "shorten")])
def test_client_errors_are_not_retried(fake, status, hint_word):
    server = fake(fail(status, "nope"))
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    with pytest.raises(CoreError) as info:
        client.chat(USER)
    assert len(server.hits) == 1 and info.value.status == status and hint_word in info.value.hint


def test_timeouts_and_cut_connections_are_retried(fake):
    server = fake(hang(0.6), cut, ok)
    client = CoreClient(server.url + "/v1", "sim-core", timeout=0.2, **FAST)
    assert client.chat(USER).text == "echo: hello"
    assert len(server.hits) == 3 and client.stats()["retries"] == 2


def test_connection_refused_says_to_start_the_server(fake):
    server = fake()
    url = server.url + "/v1"
    server.server.shutdown()
    server.server.server_close()
    client = CoreClient(url, "sim-core", max_retries=1, **FAST)
    with pytest.raises(CoreError) as info:
        client.chat(USER)
    assert info.value.status is None and "refused" in info.value.message and f"{url} running" in info.value.hint


@pytest.mark.parametrize("payload", [b"<html>502 Bad Gateway</html>", b'{"id": "x", "choices": []}', b"[1, 2]"])
def test_garbage_200_is_an_error_in_its_place_not_a_crash(fake, payload):
    server = fake(ok, raw(200, payload), ok)
    client = CoreClient(server.url + "/v1", "sim-core", concurrency=1, **FAST)
    results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(3)])
    assert isinstance(results[0], Completion) and isinstance(results[2], Completion)
    assert isinstance(results[1], CoreError) and results[1].status == 200 and "--api" in results[1].hint
    assert len(server.hits) == 3  # not retried: the same endpoint would answer the same
    assert client.stats()["failures"] == 1


# ---- wire formats ----
def test_openai_wire_format(fake):
    server = fake()
    client = CoreClient(server.url + "/v1/", "gpt-4o", api_key="sk-abc", **FAST)
    client.chat([{"role": "system", "content": "be brief"}] + USER, draw=3, top_p=0.9)
    path, headers, body = server.hits[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-abc"
    assert body == {"model": "gpt-4o", "messages": [{"role": "system", "content": "be brief"}] + USER,
                    "temperature": 1.0, "max_tokens": 512, "top_p": 0.9, "seed": 3}


def test_anthropic_wire_format(fake):
    server = fake()
    client = CoreClient(server.url, "claude-3-5-haiku-20241022", api="anthropic", api_key="sk-ant", **FAST)
    reply = client.chat([{"role": "system", "content": "be brief"}] + USER, draw=2, max_tokens=64, seed=5)
    path, headers, body = server.hits[0]
    assert path == "/v1/messages" and headers["x-api-key"] == "sk-ant" and "Authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert body == {"model": "claude-3-5-haiku-20241022", "system": "be brief", "messages": USER,
                    "temperature": 1.0, "max_tokens": 64}
    assert (reply.text, reply.input_tokens, reply.output_tokens, reply.finish_reason) == ("echo: hello", 11, 7,
                                                                                          "end_turn")


def test_no_key_sends_no_auth_header(fake, monkeypatch):
    for var in ("CORE_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    server = fake()
    CoreClient(server.url + "/v1", "sim-core", **FAST).chat(USER)
    CoreClient(server.url, "sim-core", api="anthropic", **FAST).chat(USER)
    assert not any(h.get("Authorization") or h.get("x-api-key") for _, h, _ in server.hits)


def test_key_precedence(fake, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    monkeypatch.setenv("CORE_API_KEY", "from-core")
    server = fake()
    CoreClient(server.url + "/v1", "m", **FAST).chat(USER)
    CoreClient(server.url + "/v1", "m", api_key="from-arg", **FAST).chat(USER)
    monkeypatch.delenv("CORE_API_KEY")
    CoreClient(server.url + "/v1", "m", **FAST).chat(USER)
    assert [h["Authorization"] for _, h, _ in server.hits] == ["Bearer from-core", "Bearer from-arg",
                                                               "Bearer from-openai"]


# ---- concurrency, order, cache ----
def test_chat_many_keeps_concurrency_requests_in_flight_and_the_input_order(fake):
    """Measured on the server: the most requests it held at once is the client's concurrency, never more."""
    gate = Gate(16)
    server = fake(gate)
    client = CoreClient(server.url + "/v1", "sim-core", concurrency=16, **FAST)
    results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(48)])
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(48)]
    assert gate.most == 16 and len(server.hits) == 48


def test_cache_hits_skip_the_network_and_cost_nothing(fake, tmp_path):
    server = fake()
    path = str(tmp_path / "cache.sqlite")
    batch = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    first = CoreClient(server.url + "/v1", "sim-core", cache_path=path, **FAST).chat_many(batch)
    again = CoreClient(server.url + "/v1", "sim-core", cache_path=path, **FAST)  # a fresh client: hits from disk
    second = again.chat_many(batch)
    assert len(server.hits) == 5
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached and r.cost == 0.0 for r in second)
    assert (second[0].input_tokens, second[0].output_tokens, second[0].finish_reason) == (11, 7, "stop")
    assert again.stats()["cache_hits"] == 5 and again.stats()["requests"] == 0 and again.stats()["dollars"] == 0
    assert again.dollars(second[0]) == first[0].cost == (11 * 0.80 + 7 * 4.0) / 1e6  # what the request is worth
    again.chat(batch[0], draw=1)              # another draw is another sample
    again.chat(batch[0], temperature=0.5)     # other params, another request
    assert len(server.hits) == 7 and server.hits[-2][2]["seed"] == 1


def test_cache_key_is_the_model_and_request_not_the_port(fake, tmp_path):
    """A local core started on a new port each run must still answer from the run's cache."""
    path = str(tmp_path / "cache.sqlite")
    first, second = fake(), fake()
    assert first.url != second.url
    CoreClient(first.url + "/v1", "sim-core", cache_path=path, **FAST).chat(USER)
    again = CoreClient(second.url + "/v1", "sim-core", cache_path=path, **FAST)
    assert again.chat(USER).cached and len(second.hits) == 0
    assert not CoreClient(second.url + "/v1", "sim-core-large", cache_path=path, **FAST).chat(USER).cached
    assert not CoreClient(second.url, "sim-core", api="anthropic", cache_path=path, **FAST).chat(USER).cached
    assert len(second.hits) == 2


def test_cache_is_shared_by_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    writer = ("import core_client, sys; c = core_client._Cache(sys.argv[1]); "
              "[c.put(f'{sys.argv[2]}-{i}', 'text', i, 1, 'stop') for i in range(100)]")
    procs = [subprocess.Popen([sys.executable, "-c", writer, path, name], cwd=ROOT) for name in "ab"]
    assert [p.wait(timeout=30) for p in procs] == [0, 0]
    cache = core_client._Cache(path)
    assert all(cache.get(f"{name}-{i}") == ("text", i, 1, "stop") for name in "ab" for i in range(100))


def test_interrupted_chat_many_stops_promptly(fake, monkeypatch):
    class InterruptAfterFirst(core_client.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt
    monkeypatch.setattr(core_client, "tqdm", InterruptAfterFirst)
    server = fake(ok, fail(500))  # the first answers; the rest wait seconds to retry, or queue behind them
    client = CoreClient(server.url + "/v1", "sim-core", concurrency=2, backoff_base=5, backoff_cap=5, progress=False)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(20)])
    client.close()  # joins the workers: quick only if the two waiting to retry gave up
    assert time.monotonic() - start < 2 and len(server.hits) <= 3  # and the queued requests were never sent


# ---- money and keys ----
def test_dollars_equal_usage_times_price_exactly(fake):
    server = fake()
    client = CoreClient(server.url + "/v1", "sim-core", **FAST)
    replies = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(3)])
    assert all(r.cost == (11 * 0.80 + 7 * 4.0) / 1e6 for r in replies)
    assert client.stats()["dollars"] == (33 * 0.80 + 21 * 4.0) / 1e6
    assert client.stats()["input_tokens"] == 33 and client.stats()["output_tokens"] == 21
    custom = CoreClient(server.url + "/v1", "sim-core", price_in=1.5, price_out=2.5, **FAST)
    assert custom.chat(USER).cost == (11 * 1.5 + 7 * 2.5) / 1e6
    unknown = CoreClient(server.url + "/v1", "my-local-llama", **FAST)
    assert unknown.chat(USER).cost is None and unknown.stats()["dollars"] is None


def test_price_table_lookup():
    assert model_price("claude-3-5-haiku-20241022") == (0.80, 4.0)
    assert model_price("claude-3-5-sonnet-latest") == (3.0, 15.0)
    assert model_price("claude-sonnet-4-20250514") == (3.0, 15.0)
    assert model_price("gpt-4o-mini-2024-07-18") == (0.15, 0.6)
    assert model_price("sim-core-large") == (3.0, 15.0) and model_price("sim-teacher") == (3.0, 15.0)
    assert model_price("gpt-4.1-nano") is None  # a longer name is another model, not a dated one


def test_key_never_in_cache_file_logs_or_errors(fake, tmp_path, caplog, capfd):
    secret = "sk-SECRET-7f3a9c"
    server = fake(fail(500), ok, fail(401, f"Incorrect API key provided: {secret}"))
    path = str(tmp_path / "cache.sqlite")
    client = CoreClient(server.url + "/v1", "sim-core", api_key=secret, cache_path=path, **FAST)
    caplog.set_level(logging.DEBUG)
    client.chat(USER)
    results = client.chat_many([[{"role": "user", "content": "other"}]])
    assert server.hits[0][1]["Authorization"] == f"Bearer {secret}"  # it was sent...
    assert isinstance(results[0], CoreError) and secret not in str(results[0]) and secret not in repr(client)
    stored = b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
    assert b"echo: hello" in stored or client.chat(USER).cached  # ...the cache holds the answer...
    out, err = capfd.readouterr()
    assert "retry" in caplog.text  # ...the logs saw the retry...
    assert secret.encode() not in stored and secret not in caplog.text + out + err  # ...and never the key


@pytest.mark.parametrize("key", ["k9x", "sk-SECRET-7f3a9c"])
def test_every_configured_key_is_scrubbed_whatever_its_length(fake, monkeypatch, key):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ant-zz")   # not this client's key, but one this process could send
    server = fake(fail(500, "upstream said: key ant-zz is fine"), fail(401, f"Incorrect API key provided: {key}"))
    client = CoreClient(server.url + "/v1", "sim-core", api_key=key, max_retries=0, **FAST)
    errors = client.chat_many([USER, [{"role": "user", "content": "other"}]])
    assert all(isinstance(e, CoreError) for e in errors) and {e.status for e in errors} == {500, 401}
    text = " ".join(str(e) + repr(e) for e in errors)
    assert "***" in text and key not in text and "ant-zz" not in text


def test_chat_many_checks_its_input():
    client = CoreClient("http://127.0.0.1:9/v1", "sim-core", **FAST)
    with pytest.raises(ValueError):
        client.chat_many([USER, "not a list of messages"])
    with pytest.raises(ValueError):
        client.chat_many([USER, USER], draws=[0])
    with pytest.raises(ValueError):
        CoreClient("localhost:8000", "sim-core")
    with pytest.raises(ValueError):
        CoreClient("http://127.0.0.1:9", "sim-core", api="gemini")


# ---- through the simulated core (sim_core.py): the real prompts, both wire formats ----
@pytest.fixture
def sim():
    servers = []

    def start(**options):
        servers.append(sim_core.start_server(**options))
        return servers[-1][1]  # base URL without /v1: sim_core serves both APIs under it
    yield start
    for server, _ in servers:
        server.shutdown()


def solo_requests(n, seed=5):
    return [mathsim.core_messages(t.problem, None) for t in mathsim.generate_tasks(n, seed=seed, split="val")]


def test_both_shapes_round_trip_through_sim_core(sim):
    url, batch = sim(), solo_requests(8)
    openai = CoreClient(url + "/v1", "sim-core", **FAST)
    anthropic = CoreClient(url, "sim-core", api="anthropic", **FAST)
    texts = {}
    for client, seeds, finish in [(openai, [0, 3], "stop"), (anthropic, [None, None], "end_turn")]:
        first, third = client.chat_many(batch), client.chat_many(batch, draws=[3] * len(batch))
        for messages, reply, again in zip(batch, first, third):
            # the server saw exactly these messages (and seed = draw on OpenAI) and the client read back its text
            assert reply.text == sim_core.complete("sim-core", messages, 1.0, seeds[0])
            assert again.text == sim_core.complete("sim-core", messages, 1.0, seeds[1])
            assert reply.finish_reason == finish and reply.output_tokens == math.ceil(len(reply.text) / 4)
            assert reply.cost == (reply.input_tokens * 0.80 + reply.output_tokens * 4.0) / 1e6
        texts[client.api] = ([r.text for r in first], [r.text for r in third])
    assert texts["openai"][0] != texts["openai"][1]        # OpenAI draws are independent samples (seed = draw)...
    assert texts["anthropic"][0] == texts["anthropic"][1]  # ...Anthropic has no seed: at a fixed temperature they repeat


def test_sim_core_fail_rate_0_3_over_500_requests(sim):
    """Done-when: 500 entries in order, each a Completion or a CoreError, >= 99% Completions (default retries)."""
    client = CoreClient(sim(fail_rate=0.3) + "/v1", "sim-core", **FAST)
    batch = solo_requests(500, seed=11)
    results = client.chat_many(batch)
    assert len(results) == 500 and all(isinstance(r, (Completion, CoreError)) for r in results)
    done = [(m, r) for m, r in zip(batch, results) if isinstance(r, Completion)]
    assert len(done) >= 495 and all(r.text == sim_core.complete("sim-core", m, 1.0, 0) for m, r in done)
    stats = client.stats()
    assert stats["calls"] == 500 and stats["failures"] == 500 - len(done) and stats["retries"] > 50


# ---- command line ----
def run_cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")} | (env_extra or {})
    return subprocess.run([sys.executable, "core_client.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)


def test_cli_prints_reply_tokens_and_cost(fake):
    server = fake()
    result = run_cli("--base-url", server.url, "--model", "sim-core", "--api", "anthropic", "hi there")
    assert result.returncode == 0, result.stderr
    assert "echo: hi there" in result.stdout and "11 input + 7 output tokens" in result.stdout
    assert f"${(11 * 0.8 + 7 * 4) / 1e6:.6f}" in result.stdout


def test_cli_failure_is_one_line_and_exit_1(fake):
    server = fake(fail(401, "invalid key"))
    result = run_cli("--base-url", server.url + "/v1", "--model", "sim-core", "hi",
                     env_extra={"OPENAI_API_KEY": "sk-cli-secret"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "OPENAI_API_KEY" in result.stderr and "sk-cli-secret" not in result.stderr
    assert run_cli("--model", "sim-core", "hi").returncode == 2  # argparse: --base-url missing


# ---- keys and replies stay bounded ----
def test_a_key_with_whitespace_is_refused_without_echoing_it():
    for key in ("sk-secret123\r", "sk-secret123\n", "sk-sec ret123", "sk-\x00secret123"):
        with pytest.raises(ValueError) as e:
            CoreClient("http://127.0.0.1:9/v1", "sim-core", api_key=key)
        assert "secret123" not in str(e.value) and "whitespace" in str(e.value)


def redirect(location):
    def action(handler, body):
        handler.send_response(307)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return action


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(fake, api):
    elsewhere = fake(ok)
    server = fake(redirect(elsewhere.url + "/v1/messages"))
    client = CoreClient(server.url + "/v1", "sim-core", api=api, api_key="sk-secret123", **FAST)
    with pytest.raises(CoreError) as e:
        client.chat(USER)
    assert e.value.status == 307 and "redirect" in str(e.value) and "secret123" not in str(e.value)
    assert elsewhere.hits == [] and len(server.hits) == 1            # refused at once, not retried


def test_a_huge_or_gzip_bombed_reply_is_one_clear_error(fake):
    import gzip
    huge = b'{"x": "' + b"a" * (core_client.MAX_REPLY_BYTES + 10) + b'"}'
    bomb = gzip.compress(huge)
    for script in (raw(200, huge), raw(200, bomb, {"Content-Encoding": "gzip"})):
        server = fake(script)
        with pytest.raises(CoreError, match="longer than"):
            CoreClient(server.url + "/v1", "sim-core", **FAST, max_retries=0).chat(USER)


def test_a_dripping_reply_meets_the_total_deadline(fake):
    def drip(handler, body):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            for _ in range(40):
                handler.wfile.write(b" " * 2000)
                handler.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
    server = fake(drip)
    client = CoreClient(server.url + "/v1", "sim-core", timeout=1.0, max_retries=0, progress=False)
    start = time.monotonic()
    with pytest.raises(CoreError):
        client.chat(USER)
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("usage", [{"prompt_tokens": True, "completion_tokens": 3},
                                   {"prompt_tokens": -1000000000, "completion_tokens": 3},
                                   {"prompt_tokens": 10 ** 30, "completion_tokens": 3},
                                   {"prompt_tokens": 2.5, "completion_tokens": 3}])
def test_token_counts_must_be_sane_integers(fake, usage):
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    server = fake(raw(200, json.dumps(body).encode()))
    with pytest.raises(CoreError, match="shape"):
        CoreClient(server.url + "/v1", "sim-core", **FAST).chat(USER)
