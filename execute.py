"""Calling the cores and the teacher: the one place where the recipe sends strategies to a model and grades them.

1. `client_for` makes the CoreClient of a role (the cheap core, the large core, the teacher) with its sampling
   parameters and the run's request cache.
2. `run_strategies` runs each task's strategy (None: the core alone) on a core and grades the replies by the task's
   family: baselines, acceptance sampling, validation, evaluation and the GRPO reward all go through it.
3. `ask_teacher` asks the teacher for K strategies per task and reads each out of its <strategy> envelope.
4. A request that fails for good is a CoreError in its place, never a wrong answer; `run_requests` counts such
   failures, and stops the stage with the first error when most requests fail (a wrong key, a dead endpoint).
"""
import sys
from dataclasses import dataclass, fields

import requests

import families
import strategy_format
from core_client import CoreClient, CoreError
from run_dir import UserError


@dataclass
class Endpoints:
    """Where the models are and how they are called: the command line's connection flags, in one place."""
    core_url: str | None
    core_model: str = "sim-core"
    core_api: str = "openai"
    large_core_model: str = "sim-core-large"
    teacher_url: str | None = None              # None: the core's URL
    teacher_model: str = "sim-teacher"
    teacher_api: str | None = None              # None: the core's API
    concurrency: int = 16
    max_retries: int = 6
    core_temperature: float = 1.0
    core_max_tokens: int = 512

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def client_for(endpoints, role, run):
    """A CoreClient for role in core|large|teacher, all sharing the run's request cache (check_world first)."""
    e = endpoints
    url = (e.teacher_url if role == "teacher" else None) or e.core_url
    if not url:
        raise UserError("no core configured: pass --core-url or set CORE_URL "
                        "(bash train.sh starts the local simulated core for you)")
    check_world(run, url)
    model = {"core": e.core_model, "large": e.large_core_model, "teacher": e.teacher_model}[role]
    api = (e.teacher_api if role == "teacher" else None) or e.core_api
    # the teacher samples at temperature 1 (K distinct strategies); the cores as the user set them
    params = dict(temperature=1.0 if role == "teacher" else e.core_temperature, max_tokens=e.core_max_tokens)
    try:
        return CoreClient(url, model, api=api, concurrency=e.concurrency, max_retries=e.max_retries,
                          cache_path=run.file("cache.sqlite"), params=params)
    except ValueError as e:                     # a malformed URL or key: one line, the key never echoed
        raise UserError(f"{role}: {e}")


def check_world(run, url):
    """A run directory holds one offline world. The simulated teacher's echo rate (docs/world.md §5) changes its
    replies, which the run's cache and accepted data hold, so the rate the server lists (GET /models) is recorded
    in the run's config.json, and a stage against a server with another rate stops with one line. Bookkeeping only:
    nothing decides on it. A real API lists no such rate (or answers no unauthenticated GET): nothing is recorded."""
    try:
        response = requests.get(url.rstrip("/") + "/models", timeout=10)
        models = response.json().get("data", []) if response.ok else []
    except (requests.RequestException, ValueError, AttributeError):
        return
    echo = next((m["teacher_echo"] for m in models if isinstance(m, dict) and "teacher_echo" in m), None)
    if echo is not None:
        run.check_config("world", {"teacher_echo": echo})


def run_requests(client, messages, what, draws=None):
    """chat_many with failure accounting: a few failures after retries are counted and left out, but a stage
    in which most requests fail (wrong key, dead endpoint) stops with the first error."""
    draws = draws or [0] * len(messages)
    # one request first: a dead endpoint or a wrong key stops here with one clear line, before a thousand retries
    first = client.chat_many(messages[:1], draws=draws[:1], desc=what)
    if first and isinstance(first[0], CoreError):
        raise UserError(f"{what}: {first[0]}")
    out = first + client.chat_many(messages[1:], draws=draws[1:], desc=what)
    failures = [r for r in out if isinstance(r, CoreError)]
    if failures and (len(failures) > 0.2 * len(out) or len(failures) == len(out)):
        raise UserError(f"{what}: {len(failures)}/{len(out)} requests failed; first: {failures[0]}")
    if failures:
        print(f"warning: {what}: {len(failures)} requests failed after retries and are left out", file=sys.stderr)
    return out


def run_strategies(client, task_list, strategies, what, draws=None, strict=True):
    """The core's reply to each task with its strategy (None, or the guide's decline: the core alone), graded by the
    task's family: (replies, verdicts), with a CoreError in place of a reply whose call failed for good and None as
    its verdict. strict: with run_requests' failure accounting; the GRPO reward tolerates failures instead (a NaN
    reward)."""
    messages = [families.family_of(t).core_messages(t.problem, None if strategy_format.declines(s) else s)
                for t, s in zip(task_list, strategies)]
    if strict:
        replies = run_requests(client, messages, what, draws)
    else:
        replies = client.chat_many(messages, draws=draws, desc=what)
    return replies, families.grade_replies(task_list, replies)


def ask_teacher(teacher, task_list, what, k=1, name_quantities=True):
    """K teacher strategies per task (draws 0 .. K-1), task-major: [(reply, strategy)], the strategy read out of its
    <strategy> envelope (the whole reply when it has none), or (CoreError, None) where the call failed for good."""
    messages = [families.family_of(t).teacher_messages(t.problem, name_quantities) for t in task_list for _ in range(k)]
    replies = run_requests(teacher, messages, what, draws=[d for _ in task_list for d in range(k)])
    return [(r, None) if isinstance(r, CoreError) else (r, strategy_format.extract_strategy(r.text) or r.text.strip())
            for r in replies]
