"""Run untrusted Python programs (generated code and its tests) in a contained subprocess, and classify the outcome.

1. `run(source, timeout_s)` writes the program into a fresh temporary directory, runs it there as one `python -I`
   subprocess in its own session (process group), and deletes the directory afterwards. The result's `status` is
   `passed` (the program ran to its last line and exited 0), `failed` (an exception such as a failed assert, or an
   exit before the end), `timeout` (wall-clock or CPU limit) or `crashed` (stopped by the sandbox: memory or output
   limit, a forbidden operation, a signal), with a one-line `reason` and the captured `stdout` / `stderr`.
2. Layers, outermost first. The parent: a wall-clock deadline, after which the whole process group gets SIGKILL (it
   gets it anyway when the program ends, so stray children die with it); stdout and stderr read as they come and
   capped (a program that prints more is killed, never buffered); an environment built from a whitelist, so no key
   or token of the caller's reaches the child. The child's kernel limits, set by a small bootstrap before the program
   runs, soft = hard so the program cannot raise them again: CPU seconds, address space, file size, processes, open
   files, no core dumps. The bootstrap's Python guards: network, subprocess, ctypes, multiprocessing and resource
   imports raise `SandboxViolation`, and so do os / posix functions that kill, fork, exec, change identity, session
   or directory, any write, delete, rename or mkdir whose path resolves outside the temporary directory, and reads
   of other processes' /proc entries (the caller's environment is readable at /proc/<ppid>/environ).
3. What this is NOT: a security boundary against a determined attacker. The Python guards live in the program's own
   interpreter and can be undone from inside it (the original functions are reachable, e.g. through closures or
   `gc`). What holds regardless: the deadline and process-group kill, the output caps, the clean environment, the
   kernel limits, and the temporary working directory. RLIMIT_NPROC does not bind root, so run as root (as the tests
   here do) a fork bomb is stopped only by the Python guard on fork and the group kill. A process that escapes the
   guards and calls setsid() leaves the group and outlives the kill. Nothing stops reads of world-readable files or
   writes to world-writable directories by a program that has undone the guards. For real isolation run the child
   as an unprivileged user in a container or VM with no network.
4. `run_many` runs a list of programs on a bounded thread pool (each thread waits on one subprocess), results in
   input order.
"""
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

STATUSES = ("passed", "failed", "timeout", "crashed")

# The child runs this with `python -I -c BOOTSTRAP program status_fd limits`. It is trusted code: it sets the kernel
# limits, installs the guards, runs the program, and reports on the status pipe how the program ended.
BOOTSTRAP = r'''
import builtins, io, json, os, posix, resource, signal, sys, _io
program, status_fd, limits = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
for name, (soft, hard) in limits.items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
write, root, own_pid = os.write, os.path.realpath(os.getcwd()), str(os.getpid())
with open(program, encoding="utf-8") as f:
    source = f.read()
try:
    code = compile(source, "program.py", "exec")
except SyntaxError as e:
    write(status_fd, json.dumps({"end": "exception", "type": "SyntaxError", "message": str(e)}).encode())
    raise

class SandboxViolation(PermissionError):
    """The program tried something the sandbox forbids."""

def allowed(path, writing):
    """Writes only inside the sandbox directory; reads anywhere but other processes' /proc entries (their
    environment and memory)."""
    if isinstance(path, int):            # an open file descriptor: it was checked when it was opened
        return True
    real = os.path.realpath(os.fsdecode(path))
    if writing:
        return real == root or real.startswith(root + os.sep)
    parts = real.split(os.sep)
    return not (len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_pid)

def forbid(name):
    def forbidden(*args, **kwargs):
        raise SandboxViolation(f"{name} is disabled in the sandbox")
    return forbidden

def confine(name, fn, n_paths):
    def confined(*args, **kwargs):
        if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
            raise SandboxViolation(f"{name} with dir_fd is disabled in the sandbox")
        for path in args[:n_paths]:
            if not allowed(path, writing=True):
                raise SandboxViolation(f"{name} outside the sandbox directory: {path!r}")
        return fn(*args, **kwargs)
    return confined

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def check_open(name, path, writing):
    if not allowed(path, writing):
        raise SandboxViolation(f"{name} of {path!r} for {'writing' if writing else 'reading'} is disabled")

def confined_open(fn):
    def open_(file, mode="r", *args, **kwargs):
        check_open("open", file, any(c in str(mode) for c in "wax+"))
        return fn(file, mode, *args, **kwargs)
    return open_

def confined_os_open(fn):
    def os_open(path, flags, *args, **kwargs):
        if kwargs.get("dir_fd") is not None:
            raise SandboxViolation("os.open with dir_fd is disabled in the sandbox")
        check_open("os.open", path, bool(flags & WRITE_FLAGS))
        return fn(path, flags, *args, **kwargs)
    return os_open

class FileIO(_io.FileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        check_open("FileIO", file, any(c in str(mode) for c in "wax+"))
        super().__init__(file, mode, *args, **kwargs)

FORBIDDEN = ("kill", "killpg", "fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "pidfd_open",
             "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve",
             "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "setsid", "setpgid", "setpgrp",
             "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
             "setgroups", "chroot", "chdir", "fchdir", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown",
             "link", "symlink")
CONFINED = {"remove": 1, "unlink": 1, "rmdir": 1, "removedirs": 1, "mkdir": 1, "makedirs": 1, "rename": 2,
            "renames": 2, "replace": 2, "truncate": 1, "utime": 1, "mkfifo": 1, "mknod": 1}
for module in (os, posix):
    for name in FORBIDDEN:
        if hasattr(module, name):
            setattr(module, name, forbid(f"os.{name}"))
    for name, n_paths in CONFINED.items():
        if hasattr(module, name):
            setattr(module, name, confine(f"os.{name}", getattr(module, name), n_paths))
    module.open = confined_os_open(module.open)
builtins.open = io.open = _io.open = confined_open(io.open)
io.FileIO = _io.FileIO = FileIO
if hasattr(signal, "pidfd_send_signal"):
    signal.pidfd_send_signal = forbid("signal.pidfd_send_signal")

BLOCKED = {"socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "subprocess", "_posixsubprocess",
           "multiprocessing", "_multiprocessing", "resource", "pty", "_pyio"}

class BlockImports:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise SandboxViolation(f"import of {name} is disabled in the sandbox")
        return None

sys.meta_path.insert(0, BlockImports())
for name in list(sys.modules):
    if name.partition(".")[0] in BLOCKED:
        del sys.modules[name]
del resource

def report(**end):
    write(status_fd, json.dumps(end).encode())

sys.argv = ["program.py"]
try:
    exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": builtins})
except SystemExit as e:
    report(end="exit", code=e.code if isinstance(e.code, int) or e.code is None else 1)
    raise
except BaseException as e:
    report(end="exception", type=type(e).__name__, message=str(e)[:500])
    raise
report(end="ok")
'''

# The child's environment: a whitelist. Nothing of the caller's (API keys, tokens, proxies) is passed on.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Result:
    status: str            # passed | failed | timeout | crashed
    reason: str            # one line: why it is not passed ("" when passed)
    stdout: str
    stderr: str
    returncode: int | None
    wall_s: float


def _kill_group(pid: int) -> None:
    """SIGKILL the program's process group (its session); nothing to do when the group is already gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass                                     # every member has exited already


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it: while it is a zombie its pid (the group id) cannot be reused,
    so the group kill that follows cannot hit another process."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _well_formed(end) -> bool:
    """Is `end` a status report as BOOTSTRAP writes it?"""
    if not isinstance(end, dict) or end.get("end") not in ("ok", "exit", "exception"):
        return False
    if end["end"] == "exit":
        return "code" in end
    return end["end"] == "ok" or (isinstance(end.get("type"), str) and isinstance(end.get("message"), str))


def _classify(end: dict | None, rc: int, limit: tuple | None, cpu_s: float) -> tuple:
    if limit is not None:
        return limit
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in set(signal.Signals) else f"signal {-rc}"
        if name == "SIGXCPU":
            return "timeout", f"CPU time limit of {cpu_s:g} s"
        return "crashed", f"killed by {name}"
    if end is None:
        return "failed", f"exited with status {rc} before the end of the program"
    if not _well_formed(end):                  # the program wrote on the status pipe itself: its verdict alone
        return "crashed", "malformed status report (the program wrote on the sandbox's status pipe)"
    if end["end"] == "ok":
        return ("passed", "") if rc == 0 else ("failed", f"exit status {rc} after the program ended")
    if end["end"] == "exit":
        return "failed", f"exited early (sys.exit({end['code']})) before the end of the program"
    kind, message = end["type"], end["message"]
    if kind == "SandboxViolation":
        return "crashed", f"forbidden: {message}"
    if kind == "MemoryError":
        return "crashed", "memory limit (MemoryError)"
    return "failed", f"{kind}: {message}".splitlines()[0][:300]


def _read(proc, status_r: int, timeout_s: float, start: float, max_output: int) -> tuple:
    """Read stdout, stderr and the status pipe until they close or a limit is hit: (buffers, limit or None)."""
    buffers, limit = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}, None
    caps = {"stdout": max_output, "stderr": max_output, "status": 4096}
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(status_r, selectors.EVENT_READ, "status")
        deadline, group_killed = start + timeout_s, False
        while sel.get_map() and limit is None:
            left = deadline - time.monotonic()
            if left <= 0:
                limit = ("timeout", f"wall-clock limit of {timeout_s:g} s")
                break
            for key, _ in sel.select(min(left, 0.1)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf, cap = buffers[key.data], caps[key.data]
                room = cap - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    limit = ("crashed", f"output limit: {key.data} exceeded {cap} bytes")
                    break
            # The program has ended: kill what it left in its group, so their pipe ends close and we see EOF.
            if not group_killed and _exited(proc.pid):
                _kill_group(proc.pid)
                group_killed = True
    return buffers, limit


def run(source: str, timeout_s: float = 10.0, *, cpu_s: float | None = None, memory_mb: int = 1024,
        file_mb: int = 16, max_procs: int = 32, max_files: int = 64, max_output: int = 1_000_000,
        python: str = sys.executable) -> Result:
    """Run one Python program in the sandbox (see the module docstring) and classify how it ended.

    cpu_s defaults to timeout_s; max_output caps stdout and stderr each, in bytes."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    cpu_s = timeout_s if cpu_s is None else cpu_s
    cpu = max(1, int(cpu_s + 0.999))
    limits = {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (memory_mb << 20,) * 2, "RLIMIT_FSIZE": (file_mb << 20,) * 2,
              "RLIMIT_NPROC": (max_procs,) * 2, "RLIMIT_NOFILE": (max_files,) * 2, "RLIMIT_CORE": (0, 0)}
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    start = time.monotonic()
    try:
        program = os.path.join(workdir, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        status_r, status_w = os.pipe()
        try:
            proc = subprocess.Popen([python, "-I", "-c", BOOTSTRAP, program, str(status_w), json.dumps(limits)],
                                    cwd=workdir, env={**BASE_ENV, "HOME": workdir, "TMPDIR": workdir},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(status_w,), start_new_session=True)
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        try:
            buffers, limit = _read(proc, status_r, timeout_s, start, max_output)
        finally:                                 # also on an exception here (Ctrl-C): nothing outlives run()
            _kill_group(proc.pid)
            proc.wait()
            os.close(status_r)
            proc.stdout.close()
            proc.stderr.close()
        try:
            end = json.loads(buffers["status"]) if buffers["status"] else None
        except json.JSONDecodeError:
            end = None                           # the program wrote into the status pipe itself: no trusted end
        status, reason = _classify(end, proc.returncode, limit, cpu_s)
        return Result(status, reason, buffers["stdout"].decode("utf-8", "replace"),
                      buffers["stderr"].decode("utf-8", "replace"), proc.returncode, time.monotonic() - start)
    finally:
        _remove(workdir)


def _remove(workdir: str) -> None:
    """Delete the program's directory whatever it holds; a straggler still writing into it gets a few tries."""
    for _ in range(5):
        shutil.rmtree(workdir, ignore_errors=True)
        if not os.path.exists(workdir):
            return
        time.sleep(0.05)


def run_many(sources: list, timeout_s: float = 10.0, *, workers: int | None = None, desc: str | None = None,
             **limits) -> list:
    """run() every program on a pool of `workers` threads (default: the CPU count); results in input order.
    A tqdm bar is shown when desc is given."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda source: run(source, timeout_s, **limits), sources)
        return list(tqdm(results, total=len(sources), desc=desc, disable=desc is None))
