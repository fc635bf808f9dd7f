"""Run untrusted Python in a contained process tree, and decide verdicts where the graded code cannot reach.

1. Layout. Every run starts one host process (sandbox_host.py, trusted, run as `python -I -c <its text>`) in a fresh
   directory (under bubblewrap a tmpfs inside it), under bubblewrap when the machine has it. The host never runs
   graded code: it forks one child per program (C), which closes every descriptor but its own channel, starts its
   own session, sets kernel limits (soft = hard: CPU seconds, address space, file size, processes, open files, no
   core dumps), sets no_new_privs and the Python guards (network, subprocess, ctypes, fork, exec, kill, writes
   outside its directory, other processes' /proc entries), and only then runs the code. The host is not dumpable
   and is a child subreaper: after each program it kills every process left below it, empties the program's
   directory, and then reports. The grader kills the whole tree when the host ends or a limit is hit (wall clock,
   output caps), and deletes the directory.
2. Verdicts. `run(source)` runs one whole program and says how it ended (`passed`: it ran to its last line and exited
   0). That verdict is the program's own word (it can write its status pipe and exit 0), so graders do not use it:
   - `call_many` (codesim): C loads the function and answers calls; only the arguments enter the sandbox. Its return
     values come back as plain data (builtin types only, checked recursively: an object with its own __eq__ is
     refused) and the caller compares them with the expected values, which never leave its process.
   - `check_many` (HumanEval `check`, KodCode test files): the tests are code, so they run in a second child (T),
     forked after C, which reads its test frame itself (neither the host nor any C holds a test). T calls a stand-in
     of each function that sends the arguments to C and returns C's reply decoded as plain data (arguments mutated
     in place are copied back; exceptions come back by type name), so the test code only ever compares values C
     returned, never objects C controls, and C sees no frame, global or file of the tests. The verdict is T's
     result, relayed by the host on its own report pipe: nothing C writes (inherited descriptors, stdout, exit code,
     atexit handlers, frames) counts. A reply that is not plain data, or a C that dies, fails the test.
   Each program is graded alone: programs of a batch run one after another in one host, each C in its own session,
   and before the next one is forked everything the program started is dead (under bubblewrap the host is its pid
   namespace's init and one kill(-1) reaches every other process, however deep its tree; else rounds of killing
   the host's children until none is left) and, under bubblewrap, its directory, /tmp, /dev/shm, POSIX message
   queues and SysV IPC objects are gone (the host stops, and the rest of its batch runs in a fresh one, if any of
   them cannot be removed). A program that kills its host loses the rest of that host's batch, which is run
   again, each program in its own host if need be; its own verdict is then a crash. Nothing a program does can
   make a grading call raise: deletes walk by descriptors without recursion and every cleanup error is caught.
3. Isolation. With bubblewrap (`bwrap`, found and tried once per process), the promise (docs/sandbox.md):
   - Who: when the grader is root, a launcher (LAUNCHER) puts the host in its cgroups and becomes uid and gid
     65534 (nobody, no groups) for good before it execs bubblewrap, whose user namespace then maps that uid to
     itself: graded and test code is nobody as the machine sees it, with no capability, no new privileges and no
     user namespace of its own (--disable-userns), so /proc/sys is read-only to it. As a user, the grader's uid.
   - What it sees: an allow-list filesystem, read-only: the base interpreter's prefix (sys.base_prefix, without
     its site-packages: the standard library only; staged by the launcher when it lies under a home directory
     nobody can enter), /usr's programs and libraries, the loader's cache; a fresh read-only /dev with its own
     /dev/shm and message queues, a fresh /tmp and /proc (its own pid namespace: no view of the grader), and the
     jobs' directory. No checkout, virtual environment, benchmark data, home directory, /etc beyond the loader's
     cache, or socket file; no network (its own network namespace), IPC or UTS namespace.
   - Limits: each writable place (the jobs' directory, /tmp, /dev/shm) is a tmpfs of the file-size limit, so
     files are bounded across processes; each host has a cgroup (pids, memory) where the machine lets this process
     make one (cgroup v1, or v2 with both controllers delegated), and the rlimits stay as the floor per process;
     the job's own processes go first when its cgroup runs out of memory.
   - The host is not dumpable and is the namespace's init; the whole tree is killed when the grader dies.
   Without bubblewrap (not installed, or no namespaces in this container) the in-process guards are the fallback
   and the first graded run prints one line saying so. The guards live in the program's own interpreter and can be
   undone from inside it; then, as the same user as the grader (and with root's capabilities if the grader is
   root), a program can open sockets, read the grader's /proc entries (its API keys), kill or trace any process of
   that user, and write wherever that user can. What holds in both modes: the deadline and the tree kill, the
   output caps, the clean environment (a whitelist: no key or token of the caller's), the kernel limits (RLIMIT_NPROC
   does not bind root), the cgroup where one can be made, and verdicts decided outside C. EXECTUNE_SANDBOX=guards
   forces the fallback; =bwrap makes its absence an error.
"""
import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

import sandbox_host
from sandbox_host import NotPlain, decode  # noqa: F401  (the callers' plain-data decoder)

# The host runs from its text (`python -I -c`), so nothing on the program's path can replace it.
with open(sandbox_host.__file__, encoding="utf-8") as _f:
    HOST_SOURCE = _f.read()

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


# ---------------------------------------------------------------------------------------------------------------
# Isolation: bubblewrap when it works here, else the in-process guards (with one line saying so)
_isolation, _isolation_lock, _warned = None, threading.Lock(), False
NOBODY = 65534                 # the uid and gid graded code runs as when the grader is root
JOB_ROOT = "/sandbox"          # the jobs' directory inside bubblewrap: a tmpfs of the job's file-size limit
# Run as root before bubblewrap (`python -I -S -c LAUNCHER SPEC ARGV...`): join the host's cgroups, stage the base
# interpreter where the unprivileged uid can reach it (under a home directory it could not), then become that uid
# for good (real, effective and saved ids, no groups) and exec bubblewrap, whose user namespace then maps that uid
# to itself. Its own mount table is private, so nothing it mounts is seen by the machine.
LAUNCHER = r"""
import ctypes, json, os, sys
spec, argv = json.loads(sys.argv[1]), sys.argv[2:]
for path in spec["cgroups"]:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
if spec["stage"]:
    libc = ctypes.CDLL(None, use_errno=True)
    def check(ret):
        if ret != 0:
            raise OSError(ctypes.get_errno(), "staging the interpreter: " + os.strerror(ctypes.get_errno()))
    base, stage = spec["stage"]
    check(libc.unshare(0x20000))                                          # CLONE_NEWNS
    check(libc.mount(None, b"/", None, 0x4000 | 0x40000, None))           # MS_REC | MS_PRIVATE
    check(libc.mount(b"tmpfs", stage.encode(), b"tmpfs", 0, b"mode=0755,size=64k"))
    os.mkdir(stage + "/base")
    check(libc.mount(base.encode(), (stage + "/base").encode(), None, 0x1000 | 0x4000, None))  # MS_BIND | MS_REC
if spec["uid"] is not None:
    os.setgroups([])
    os.setresgid(spec["uid"], spec["uid"], spec["uid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])
os.execv(argv[0], argv)
"""


@dataclass(frozen=True)
class Layout:
    """What bubblewrap needs to know about the interpreter: its base prefix (bound read-only, its site-packages
    hidden), the base interpreter itself, and where the launcher stages the prefix ("" when the uid reaches it)."""
    base: str
    interpreter: str
    site: str
    stage: str


def _traversable(path: str) -> bool:
    """Whether any uid can walk down to `path` (every ancestor has o+x)."""
    parts = os.path.realpath(path).split(os.sep)
    return all(os.stat(os.sep + os.path.join(*parts[1:i])).st_mode & 0o001 for i in range(2, len(parts) + 1))


def _layout(python: str) -> Layout:
    out = subprocess.run([python, "-I", "-S", "-c", "import json, sys; print(json.dumps([sys.base_prefix, "
                          "'%d.%d' % sys.version_info[:2]]))"], capture_output=True, text=True, timeout=60,
                         env=BASE_ENV)
    base, version = json.loads(out.stdout)
    base = os.path.realpath(base)
    interpreter, site = f"{base}/bin/python{version}", f"{base}/lib/python{version}/site-packages"
    stage = ""
    if os.geteuid() == 0 and not _traversable(base):
        stage = next(d for d in ("/tmp", "/mnt", "/media") if os.path.isdir(d) and not base.startswith(d + "/"))
    return Layout(base, interpreter, site, stage)


def _bwrap_argv(layout: Layout, file_bytes: int, extra: list) -> list:
    """Only what the interpreter needs, read-only: its base prefix (without its site-packages), /usr's programs and
    libraries, the loader's cache; a fresh /dev (read-only but for its own /dev/shm and message queues), /tmp and
    /proc, and the jobs' directory, each writable tmpfs at most the job's file-size limit. New namespaces of every
    kind; the user namespace maps the uid to itself and no namespace can be made inside."""
    size = str(max(1 << 20, file_bytes))
    argv = ["bwrap", "--unshare-all", "--unshare-user", *extra, "--as-pid-1", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL",
            "--ro-bind", layout.stage + "/base" if layout.stage else layout.base, layout.base]
    if os.path.isdir(layout.site):
        argv += ["--tmpfs", layout.site, "--remount-ro", layout.site]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr/bin", "/usr/lib", "/usr/lib32", "/usr/lib64"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--mqueue", "/dev/mqueue", "--remount-ro", "/dev",
             "--size", size, "--tmpfs", "/tmp", "--proc", "/proc", "--size", size, "--tmpfs", JOB_ROOT,
             "--remount-ro", "/", "--chdir", JOB_ROOT]
    return argv


def _launch(argv: list, layout: Layout | None, cgroups: list) -> list:
    """argv as this process may start it: through LAUNCHER when it must join cgroups or leave root first."""
    uid = NOBODY if os.geteuid() == 0 and argv[0] == "bwrap" else None
    if uid is None and not cgroups:
        return argv
    if argv[0] == "bwrap":
        argv = [shutil.which("bwrap")] + argv[1:]       # the launcher runs no import once it has left root
    spec = {"cgroups": cgroups, "uid": uid, "stage": [layout.base, layout.stage] if uid and layout.stage else None}
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(spec)] + argv


def isolation(python: str = sys.executable) -> tuple:
    """("bwrap", (Layout, extra flags)) when a trial run under bubblewrap works on this machine, else
    ("guards", why)."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            _isolation = _probe(python)
        return _isolation


def _probe(python: str) -> tuple:
    wanted = os.environ.get("EXECTUNE_SANDBOX", "")
    if wanted == "guards":
        return "guards", "EXECTUNE_SANDBOX=guards"
    why = "bwrap is not installed"
    if shutil.which("bwrap"):
        try:
            layout = _layout(python)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            layout, why = None, f"cannot read the base interpreter's layout: {e}"
        # --disable-userns (bubblewrap >= 0.8): no user namespace inside; older ones run without that promise
        for extra in (["--disable-userns"], []) if layout else ():
            argv = _launch(_bwrap_argv(layout, 1 << 20, extra) + [layout.interpreter, "-I", "-c", "print('ok')"],
                           layout, [])
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=BASE_ENV, cwd="/")
                if out.returncode == 0 and out.stdout == "ok\n":
                    return "bwrap", (layout, extra)
                why = f"a trial run under bwrap failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:160]}"
            except (OSError, subprocess.TimeoutExpired) as e:
                why = f"a trial run under bwrap failed: {e}"
    if wanted == "bwrap":
        raise RuntimeError(f"EXECTUNE_SANDBOX=bwrap, but {why}")
    return "guards", why


# ---------------------------------------------------------------------------------------------------------------
# Cgroups: one per host, so that the pids and memory limits hold for a job as a whole (rlimits stay the floor)
_cgroup_parents_found, _cgroup_count = None, iter(range(1 << 62))


def cgroup_parents() -> dict:
    """{"pids": dir, "memory": dir}: where this process may make cgroups (cgroup v1 hierarchies, or v2 with both
    controllers delegated to it), found once; {} where none is writable, and then the rlimits alone bound a job."""
    global _cgroup_parents_found
    if _cgroup_parents_found is None:
        _cgroup_parents_found = _find_cgroup_parents()
    return _cgroup_parents_found


def _find_cgroup_parents() -> dict:
    try:
        with open("/proc/self/cgroup") as f:
            own = {c: path for _, cs, path in (line.rstrip("\n").split(":", 2) for line in f) for c in cs.split(",")}
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return {}
    found = {}
    for m in mounts:
        fields = m[m.index("-") + 1:]
        root, point, kind, options = m[3], m[4], fields[0], fields[2].split(",")
        for controller in ("pids", "memory"):
            if kind == "cgroup" and controller in options and controller in own:
                found[controller] = os.path.normpath(point + own[controller][len(root.rstrip("/")):])
        if kind == "cgroup2" and "" in own and not found:
            where = os.path.normpath(point + own[""][len(root.rstrip("/")):])
            try:
                with open(os.path.join(where, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
                if {"pids", "memory"} <= set(enabled):
                    found = {"pids": where, "memory": where}
            except OSError:
                pass
    found = {c: d for c, d in found.items() if os.access(d, os.W_OK)}
    return found if set(found) == {"pids", "memory"} else {}


def _cgroup_make(limits: dict) -> list:
    """Make the host's cgroups (pids and memory: the job's limits plus room for the host, its tmpfs and bwrap);
    their directories, [] where the machine has none writable."""
    parents, made = cgroup_parents(), []
    if not parents:
        return []
    name = f"exectune-sandbox-{os.getpid()}-{next(_cgroup_count)}"
    procs = limits["RLIMIT_NPROC"][0] + 16
    memory = limits["RLIMIT_AS"][0] + 3 * limits["RLIMIT_FSIZE"][0] + (96 << 20)
    v2 = parents["pids"] == parents["memory"]
    settings = {"pids": {"pids.max": procs},
                "memory": {"memory.max": memory, "memory.swap.max": 0} if v2 else
                          {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory}}
    try:
        for controller in ("pids",) if v2 else ("pids", "memory"):
            made.append(os.path.join(parents[controller], name))
            os.mkdir(made[-1])
        for controller, values in settings.items():
            for key, value in values.items():
                path = os.path.join(parents[controller], name, key)
                if os.path.exists(path):
                    with open(path, "w") as f:
                        f.write(str(value))
        return made
    except OSError as e:                      # then none for this process: rlimits only, said once
        global _cgroup_parents_found
        _cgroup_end(made)
        _cgroup_parents_found = {}
        print(f"sandbox: no cgroup for the sandbox ({e}); its limits hold per process only", file=sys.stderr)
        return []


def _cgroup_end(dirs: list) -> None:
    """Kill whatever is left in the host's cgroups, then remove them (never raises)."""
    for d in dirs:
        for _ in range(500):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
                if not pids:
                    os.rmdir(d)
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except FileNotFoundError:
                break
            except OSError:
                pass
            time.sleep(0.01)


def _warn_once(kind: tuple) -> None:
    global _warned
    if kind[0] != "bwrap" and not _warned:
        _warned = True
        print(f"sandbox: no bubblewrap isolation ({kind[1]}); graded code runs with in-process guards only, "
              f"weaker isolation (see README, Code)", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# One host: start it, stream its frames, read its output and reports, kill its tree, delete its directory
def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _host(mode: str, spec: dict, frames: list, deadline_s: float, max_output: int, python: str) -> tuple:
    """Run one host over `frames`: (reports by job index, stdout, stderr, limit (status, reason) or None)."""
    kind = isolation(python)
    _warn_once(kind)
    private = kind[0] == "bwrap"
    # under bubblewrap the jobs' directory is a tmpfs inside it, gone with it; else a directory here
    workdir = JOB_ROOT if private else tempfile.mkdtemp(prefix="sandbox-")
    cgroups = []
    try:
        cgroups = _cgroup_make(spec["limits"])
        header = {"mode": mode, "dir": workdir, "private": private, **spec}
        report_r, report_w = os.pipe()
        if private:
            layout, extra = kind[1]
            argv = (_bwrap_argv(layout, spec["limits"]["RLIMIT_FSIZE"][0], extra)
                    + [layout.interpreter, "-I", "-c", HOST_SOURCE, str(report_w)])
        else:
            layout, argv = None, [python, "-I", "-c", HOST_SOURCE, str(report_w)]
        try:
            argv = _launch(argv, layout, [os.path.join(d, "cgroup.procs") for d in cgroups])
            proc = subprocess.Popen(argv, cwd="/" if private else workdir,
                                    env={**BASE_ENV, "HOME": workdir, "TMPDIR": workdir},
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(report_w,), start_new_session=True)
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        writer = threading.Thread(target=_feed, args=(proc.stdin, [_frame(header)] + [_frame(f) for f in frames]),
                                  daemon=True)
        writer.start()
        try:
            buffers, limit = _read(proc, report_r, deadline_s, max_output, len(frames) and header["n"])
        finally:                                 # also on an exception here (Ctrl-C): nothing outlives the call
            _kill_group(proc.pid)
            proc.wait()
            os.close(report_r)
            proc.stdout.close()
            proc.stderr.close()
            writer.join()
        reports, data = {}, bytes(buffers["report"])
        while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
            n = struct.unpack(">I", data[:4])[0]
            try:
                report = json.loads(data[4:4 + n])
                reports[int(report["i"])] = report
            except (ValueError, KeyError, TypeError, RecursionError):
                pass                             # not the host's: that job has no report and runs again
            data = data[4 + n:]
        return (reports, buffers["stdout"].decode("utf-8", "replace"), buffers["stderr"].decode("utf-8", "replace"),
                limit)
    finally:
        _cgroup_end(cgroups)                     # whatever is left in them is killed first
        if not private:
            _remove(workdir)


def _feed(pipe, frames: list) -> None:
    try:
        for frame in frames:
            pipe.write(frame)
            pipe.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass                                    # the host has ended: the frames it did not read are run again
    finally:
        try:
            pipe.close()
        except (BrokenPipeError, OSError):
            pass


def _kill_group(pid: int) -> None:
    """SIGKILL the host's process group (under bubblewrap: bwrap, whose death takes its pid namespace along)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass                                     # every member has exited already


def _frames_in(data: bytes) -> int:
    count, at = 0, 0
    while len(data) - at >= 4 and len(data) - at >= 4 + struct.unpack(">I", data[at:at + 4])[0]:
        at += 4 + struct.unpack(">I", data[at:at + 4])[0]
        count += 1
    return count


def _read(proc, report_r: int, deadline_s: float, max_output: int, n: int) -> tuple:
    """Read stdout, stderr and the report pipe until the host has sent n reports or closed the pipe (then stdout
    and stderr get a short grace), or a limit is hit."""
    buffers, limit = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray()}, None
    caps = {"stdout": max_output, "stderr": max_output, "report": 256 << 20}
    deadline, grace = time.monotonic() + deadline_s, None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(report_r, selectors.EVENT_READ, "report")
        while sel.get_map() and limit is None:
            now = time.monotonic()
            if grace is not None and now > grace:
                break                            # the host is done; whatever still holds stdout is killed now
            if now >= deadline:
                limit = ("timeout", f"wall-clock limit of {deadline_s:g} s")
                break
            for key, _ in sel.select(min(deadline - now, 0.1)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    if key.data == "report":
                        grace = time.monotonic() + 0.2
                    continue
                buf, cap = buffers[key.data], caps[key.data]
                room = cap - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    limit = ("crashed", f"output limit: {key.data} exceeded {cap} bytes")
                    break
                if key.data == "report" and grace is None and _frames_in(buf) >= n:
                    grace = time.monotonic() + 0.2
    return buffers, limit


def _remove(workdir: str) -> None:
    """Delete the directory whatever it holds (its processes are dead; wipe never recurses nor raises). A directory
    that cannot be deleted is left, never an exception: the verdicts stand."""
    for _ in range(5):
        if sandbox_host.wipe(workdir):
            try:
                os.rmdir(workdir)
                return
            except FileNotFoundError:
                return
            except OSError:
                pass
        elif not os.path.lexists(workdir):
            return
        time.sleep(0.05)


def _limits(cpu_s: float, memory_mb: int, file_mb: int, max_procs: int, max_files: int) -> dict:
    cpu = max(1, int(cpu_s + 0.999))
    return {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (memory_mb << 20,) * 2, "RLIMIT_FSIZE": (file_mb << 20,) * 2,
            "RLIMIT_NPROC": (max_procs,) * 2, "RLIMIT_NOFILE": (max_files,) * 2, "RLIMIT_CORE": (0, 0)}


# ---------------------------------------------------------------------------------------------------------------
# run(): one whole program, its own report of how it ended (not a grader's verdict: see the module docstring)
def _well_formed(end) -> bool:
    """Is `end` a status report as the host's program_main writes it?"""
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



def run(source: str, timeout_s: float = 10.0, *, cpu_s: float | None = None, memory_mb: int = 1024,
        file_mb: int = 16, max_procs: int = 32, max_files: int = 64, max_output: int = 1_000_000,
        python: str = sys.executable) -> Result:
    """Run one Python program in the sandbox (see the module docstring) and classify how it ended.

    cpu_s defaults to timeout_s; max_output caps stdout and stderr each, in bytes."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    cpu_s = timeout_s if cpu_s is None else cpu_s
    spec = {"limits": _limits(cpu_s, memory_mb, file_mb, max_procs, max_files), "timeout_s": timeout_s,
            "cpu_s": cpu_s}
    start = time.monotonic()
    reports, stdout, stderr, limit = _host("program", {**spec, "n": 1}, [{"source": source}], timeout_s + 10,
                                           max_output, python)
    report, rc, end = reports.get(0), None, None
    if limit is None and report is None:
        limit = ("crashed", "the sandbox's host ended without a report (the program killed it)")
    elif limit is None and report.get("timeout"):
        limit = ("timeout", f"wall-clock limit of {timeout_s:g} s")
    elif limit is None:
        how, value = report["end"]
        rc = -getattr(signal, value, signal.SIGKILL) if how == "signal" else value if how == "exit" else 1
        try:
            end = json.loads(report["status_bytes"]) if report["status_bytes"] else None
        except json.JSONDecodeError:
            end = {}                             # the program wrote into the status pipe itself: no trusted end
    status, reason = _classify(end, rc if rc is not None else 0, limit, cpu_s)
    return Result(status, reason, stdout, stderr, rc, time.monotonic() - start)


# ---------------------------------------------------------------------------------------------------------------
# Graders: batches of jobs, each host running a chunk of them one after another
def _batches(mode: str, spec: dict, jobs: list, frames_of, per_job_s: float, workers: int | None, desc: str | None,
             python: str) -> list:
    """Reports of every job, in order. A host that ends early (a program killed it) leaves jobs without a report:
    the first of them runs again alone, then the rest as a new chunk, until every job has one."""
    workers = workers or os.cpu_count() or 1
    size = max(1, min(64, -(-len(jobs) // (workers * 2))))     # a host costs a start; two chunks a worker balance
    chunks = [list(range(i, min(i + size, len(jobs)))) for i in range(0, len(jobs), size)]
    out = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=desc is None)

    def run_chunk(idx):
        while idx:
            frames = [f for i in idx for f in frames_of(jobs[i])]
            reports, _, _, limit = _host(mode, {**spec, "n": len(idx)}, frames, per_job_s * len(idx) + 30,
                                         1_000_000, python)
            for k, i in enumerate(idx):
                if k in reports:
                    out[i] = reports[k]
            bar.update(len(reports))
            rest = [i for i in idx if out[i] is None]
            if rest and len(idx) == 1:           # alone, and still no report: the host died under this job
                out[idx[0]] = {"status": "crashed", "reason": (limit or (None, "the sandbox's host ended without "
                                                                         "a report (the program killed it)"))[1]}
                bar.update(1)
                return
            if rest:                             # the first job without a report is the likely culprit
                run_chunk(rest[:1])
            idx = rest[1:]

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run_chunk, chunks))
    bar.close()
    return out


def check_many(jobs: list, timeout_s: float = 30.0, *, workers: int | None = None, desc: str | None = None,
               cpu_s: float | None = None, memory_mb: int = 1024, file_mb: int = 16, max_procs: int = 32,
               max_files: int = 64, python: str = sys.executable) -> list:
    """Grade programs whose tests are code. Each job: {"source": the candidate's code, "module": its module name
    ("__main__" or "solution"), "test": test code, "style": "humaneval" (the test calls `__candidate__`, the function
    named "entry_point") or "kodcode" (the test imports from a module `solution`)}. A Result per job, in order."""
    cpu_s = timeout_s if cpu_s is None else cpu_s
    spec = {"limits": _limits(cpu_s, memory_mb, file_mb, max_procs, max_files), "timeout_s": timeout_s,
            "cpu_s": cpu_s}

    def frames_of(job):
        return [{"source": job["source"], "module": job["module"]},
                {"test": job["test"], "style": job["style"], "entry_point": job.get("entry_point")}]
    start = time.monotonic()
    reports = _batches("check", spec, jobs, frames_of, timeout_s + 2, workers, desc, python)
    wall = (time.monotonic() - start) / max(1, len(jobs))
    return [Result(r.get("status", "crashed"), r.get("reason", ""), r.get("stdout", ""), "", None, wall)
            for r in reports]


def call_many(jobs: list, per_function_s: float = 5.0, *, workers: int | None = None, desc: str | None = None,
              memory_mb: int = 1024, python: str = sys.executable) -> list:
    """Call functions with arguments: each job {"source", "name", "calls": [argument lists]}. Per job, the list of
    replies (each {"value": plain data, encoded} | {"raise": type name, ...} | {"not_plain": ...}), or None when
    the function could not answer them all (it failed to load, timed out, died or broke the protocol)."""
    spec = {"limits": _limits(per_function_s, memory_mb, 16, 32, 64), "per_function_s": per_function_s,
            "timeout_s": per_function_s, "cpu_s": per_function_s}
    reports = _batches("calls", spec, jobs, lambda job: [job], per_function_s + 2, workers, desc, python)
    return [r.get("replies") if isinstance(r.get("replies"), list) else None for r in reports]
