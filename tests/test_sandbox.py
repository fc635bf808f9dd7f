"""The sandbox against hostile programs: each one contained, classified, and this test process unharmed."""
import os
import socket
import tempfile
import time

import pytest

import sandbox
from conftest import processes_with


pytestmark = pytest.mark.usefixtures("sandbox_tmp")   # conftest: nothing left behind


def test_ordinary_outcomes():
    ok = sandbox.run("import math\nprint(math.factorial(5))\nopen('x.txt', 'w').write('inside is fine')\n")
    assert (ok.status, ok.reason, ok.stdout, ok.returncode) == ("passed", "", "120\n", 0)
    bad = sandbox.run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert (bad.status, bad.reason) == ("failed", "AssertionError: arithmetic")
    assert "Traceback" in bad.stderr
    syntax = sandbox.run("def f(:\n")
    assert syntax.status == "failed" and syntax.reason.startswith("SyntaxError")
    # Exiting with status 0 before the end is not a pass: the tests after that line never ran.
    for early in ("import sys\nsys.exit(0)\nassert False\n", "import os\nos._exit(0)\nassert False\n"):
        result = sandbox.run(early)
        assert result.status == "failed" and "before the end" in result.reason, result


def test_infinite_loop_hits_the_wall_clock_and_the_cpu_limit():
    # (No tighter timing checks: these tests also run on a busy machine.)
    wall = sandbox.run("import time\nwhile True:\n    time.sleep(0.01)\n", timeout_s=1)
    assert (wall.status, wall.reason) == ("timeout", "wall-clock limit of 1 s")
    cpu = sandbox.run("while True:\n    pass\n", timeout_s=60, cpu_s=1)
    assert (cpu.status, cpu.reason) == ("timeout", "CPU time limit of 1 s")


@pytest.mark.parametrize("bomb", ["import os\nwhile True:\n    os.fork()\n",
                                  "import posix\nwhile True:\n    posix.fork()\n",
                                  "import subprocess\nsubprocess.Popen(['python3', '-c', 'pass'])\n",
                                  "import multiprocessing\n",
                                  "import os\nos.system('echo hi')\n"])
def test_fork_bomb_is_stopped(bomb):
    result = sandbox.run(bomb, timeout_s=30)
    assert result.status == "crashed" and result.reason.startswith("forbidden:"), result


# A determined program gets the real fork, setsid and exec back (a fresh import of the builtin module).
UNGUARD = "import sys\ndel sys.modules['posix']\nimport posix\n"
BWRAP = sandbox.isolation()[0] == "bwrap"
# .ci/run installs bubblewrap and sets EXECTUNE_REQUIRE_DEV=1: there these tests must run, never skip.
needs_bwrap = pytest.mark.skipif(not BWRAP and os.environ.get("EXECTUNE_REQUIRE_DEV") != "1",
                                 reason="bubblewrap is not usable here: the fallback does not promise this")


def _escapee(marker: str, body: str = "") -> str:
    """A child that leaves the program's session and becomes `sleep MARKER` (after running `body`)."""
    return (f"pid = posix.fork()\nif pid == 0:\n    posix.setsid()\n{body}"
            f"    posix.execv('/bin/sleep', ['sleep', '{marker}'])\n")


def test_children_that_escape_the_guards_and_the_session_die_with_the_program():
    marker = "61.0001"
    result = sandbox.run(UNGUARD + _escapee(marker) + "import time\ntime.sleep(0.3)\nprint('done')\n",
                         timeout_s=30)
    assert result.status == "passed" and result.stdout == "done\n", result
    assert processes_with(marker) == [], "a child outlived run()"


def test_a_setsid_child_holding_stdout_does_not_turn_a_clean_exit_into_a_timeout():
    marker = "61.0002"
    t0 = time.monotonic()
    result = sandbox.run(UNGUARD + _escapee(marker) + "print('done')\n", timeout_s=20)
    assert (result.status, result.stdout) == ("passed", "done\n"), result
    assert time.monotonic() - t0 < 10 and processes_with(marker) == []


def test_a_setsid_child_creating_files_is_killed_and_the_directory_removed():
    # The fixture checks that the directory is gone.
    body = ("    import time\n    for i in range(10 ** 7):\n"
            "        posix.close(posix.open(f'f{i}', posix.O_CREAT | posix.O_WRONLY))\n        time.sleep(0.0001)\n")
    result = sandbox.run(UNGUARD + "pid = posix.fork()\nif pid == 0:\n    posix.setsid()\n" + body
                         + "import time\ntime.sleep(0.3)\n", timeout_s=20)
    assert result.status == "passed", result


def test_a_hundred_processes_all_die_with_the_program():
    marker = "61.0003"
    result = sandbox.run(UNGUARD + "for _ in range(100):\n    " + _escapee(marker).replace("\n", "\n    ")
                         + "\nprint('started')\n", timeout_s=30, max_procs=200)
    assert result.status == "passed", result
    assert processes_with(marker) == [], "children outlived run()"


def test_killing_the_host_fails_that_program_alone():
    killer = UNGUARD + "posix.kill(posix.getppid(), 9)\n"
    results = [sandbox.run(source, timeout_s=20) for source in (killer, "x = 1\n")]
    if BWRAP:       # the host is the pid namespace's init: a SIGKILL from inside does not reach it
        assert results[0].status == "passed", results[0]
    else:
        assert results[0].status == "crashed" and "killed" in results[0].reason, results[0]
    assert results[1].status == "passed"
    os.kill(os.getpid(), 0)


@needs_bwrap
def test_under_bubblewrap_the_grader_is_out_of_reach(monkeypatch):
    assert BWRAP, "bubblewrap is not usable here"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-42")
    me = os.getpid()
    spy = (UNGUARD + f"for pid in ({me}, posix.getppid(), 1):\n    try:\n"
           "        fd = posix.open(f'/proc/{pid}/environ', posix.O_RDONLY)\n        print(posix.read(fd, 1 << 16))\n"
           "    except OSError as e:\n        print(pid, e)\n"
           f"try:\n    posix.kill({me}, 9)\nexcept OSError as e:\n    print(e)\n")
    result = sandbox.run(spy, timeout_s=20)
    assert result.status == "passed", result
    assert "sk-test" not in result.stdout and "OPENAI_API_KEY" not in result.stdout
    os.kill(me, 0)                               # still alive


@needs_bwrap
def test_under_bubblewrap_there_is_no_network():
    assert BWRAP, "bubblewrap is not usable here"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        attack = (f"import sys\nsys.meta_path.pop(0)\nimport socket\n"
                  f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n")
        result = sandbox.run(attack, timeout_s=20)
        assert result.status == "failed" and "ConnectionRefused" in result.reason, result
        with pytest.raises(socket.timeout):
            listener.accept()


def test_ten_gigabyte_allocation_hits_the_memory_limit():
    result = sandbox.run("x = bytearray(10 * 1024 ** 3)\n")
    assert (result.status, result.reason) == ("crashed", "memory limit (MemoryError)")


@pytest.mark.parametrize("attack", ["open(VICTIM, 'w').write('owned')",
                                    "import os\nos.remove(VICTIM)",
                                    "import os\nos.rename(VICTIM, VICTIM + '.moved')",
                                    "import shutil, os\nshutil.rmtree(os.path.dirname(VICTIM))",
                                    "import pathlib\npathlib.Path(VICTIM).write_text('owned')",
                                    "import os\nfd = os.open(VICTIM, os.O_WRONLY | os.O_TRUNC)",
                                    "import os\nos.chdir(os.path.dirname(VICTIM))\nopen('victim.txt', 'w')",
                                    "import os\nos.symlink(VICTIM, 'link')\nopen('link', 'w').write('owned')"])
def test_writing_or_deleting_outside_the_directory_is_refused(tmp_path, attack):
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    result = sandbox.run(f"VICTIM = {str(victim)!r}\n{attack}\n")
    # under bubblewrap the path may not exist at all in the sandbox (the allow-list filesystem): refused either way
    assert (result.status == "crashed" and result.reason.startswith("forbidden:")
            or BWRAP and result.status == "failed" and "FileNotFoundError" in result.reason), result
    assert victim.read_text() == "precious"


def test_opening_a_socket_is_refused():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        result = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port})).sendall(b'hi')\n")
        assert result.status == "crashed" and result.reason.startswith("forbidden: import of socket"), result
        with pytest.raises(socket.timeout):
            listener.accept()


@pytest.mark.parametrize("attack", ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                                    "import posix, signal\nposix.kill(posix.getppid(), signal.SIGKILL)",
                                    "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
                                    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), 9)"])
def test_killing_the_parent_is_refused(attack):
    result = sandbox.run(attack + "\n")
    assert result.status == "crashed" and result.reason.startswith("forbidden:"), result
    os.kill(os.getpid(), 0)                     # this process is alive (and we got here)


def test_printing_a_gigabyte_is_cut_off_at_the_cap():
    result = sandbox.run("import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 1_000_000)\n",
                         timeout_s=60, max_output=100_000)
    assert (result.status, result.reason) == ("crashed", "output limit: stdout exceeded 100000 bytes")
    assert len(result.stdout) == 100_000


def test_the_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-42")
    result = sandbox.run("import os\nprint(sorted(os.environ.items()))\n")
    assert result.status == "passed", result
    assert "sk-test-not-a-real-key-42" not in result.stdout and "OPENAI_API_KEY" not in result.stdout
    assert "PATH" in result.stdout               # the whitelist did pass
    # Nor through the parent's /proc entry.
    spy = sandbox.run("import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n")
    assert spy.status == "crashed" and "sk-test" not in spy.stdout, spy


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        sandbox.run("pass", timeout_s=0)


@pytest.mark.parametrize("status", [b"[]", b"1", b"{}", b'{"end": "exit"}', b'{"end": "exception"}'])
def test_a_malformed_status_report_fails_that_program_alone(status):
    # every inherited descriptor above stderr: the status pipe keeps the parent's number, which may be large
    forge = ("import os\nfor fd in sorted(map(int, os.listdir('/proc/self/fd'))):\n    if fd > 2:\n        try:\n"
             "            os.write(fd, %r)\n        except OSError:\n            pass\nos._exit(0)\n" % status)
    results = [sandbox.run(source, timeout_s=10) for source in (forge, "x = 1\n")]
    assert results[0].status == "crashed" and "malformed status" in results[0].reason
    assert results[1].status == "passed"


def test_the_directory_is_removed_whatever_it_holds():
    before = set(os.listdir(tempfile.gettempdir()))
    source = ("import os\nos.makedirs('a/b/c', exist_ok=True)\n"
              "for i in range(200):\n    open(f'a/b/c/f{i}', 'w').write('x')\nos.chmod('a/b', 0o500)\n")
    assert sandbox.run(source, timeout_s=10).status in ("passed", "crashed")
    leftovers = {d for d in set(os.listdir(tempfile.gettempdir())) - before if d.startswith("sandbox-")}
    assert not leftovers


def test_without_bubblewrap_the_first_run_says_the_isolation_is_weaker(tmp_path):
    import subprocess
    import sys
    code = "import sandbox\nfor _ in range(3):\n    assert sandbox.run('x = 1\\n').status == 'passed'\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         env={**os.environ, "EXECTUNE_SANDBOX": "guards", "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("\n") == 1 and "weaker isolation" in out.stderr, out.stderr
