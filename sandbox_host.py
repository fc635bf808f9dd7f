"""The sandbox's host: trusted code that sandbox.py runs as `python -I -c <this file's text> REPORT_FD`, inside
bubblewrap when the machine has it. sandbox.py's docstring gives the design; this file is the half that runs inside.

The host reads jobs as frames on stdin (4-byte length, then JSON) and writes one report frame per job on REPORT_FD.
It never runs graded code itself: each candidate runs in a child forked from the host (C), which closes every
descriptor but its own channel, starts its own session, sets its kernel limits and the Python guards, and only then
runs the candidate. For a job with tests, the test code runs in a second child (T), forked after C, that reads its
test frame itself, so neither the host nor any candidate ever holds another job's tests or expected values. Values
cross between T (or the host) and C only as plain data (`encode` / `decode`). The host is not dumpable and is a
child subreaper: a process of the same user without CAP_SYS_PTRACE cannot read its memory or open its descriptors,
and every orphan of a candidate becomes the host's child, killed before the next job starts (under bubblewrap the
host is its pid namespace's init, and kill(-1) takes every other process at once). Between jobs `reset` removes what
a job could leave for the next one (its directory; under bubblewrap also /tmp, /dev/shm, POSIX message queues,
SysV IPC and keys): if anything resists, the host stops and the grader runs the rest of the batch in a fresh host.
"""
import ctypes
import io
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
MAX_FRAME = 64 << 20
MAX_DEPTH = 100


# ---------------------------------------------------------------------------------------------------------------
# Plain data: the only values that cross the boundary. encode() refuses anything but exact builtin types (a subclass
# could carry its own __eq__); decode() rebuilds them from JSON and refuses any other shape.
class NotPlain(Exception):
    pass


def encode(x, depth=0):
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if x is None or t in (bool, int, str):
        return x
    if t is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else {"r": repr(x)}
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [encode(v, depth + 1) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [encode(x.real, depth + 1), encode(x.imag, depth + 1)]}
    raise NotPlain(f"a {t.__name__}")


def decode(j, depth=0):
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    t = type(j)
    if j is None or t in (bool, int, str):
        return j
    if t is float:
        return j
    if t is list:
        return [decode(v, depth + 1) for v in j]
    if t is not dict or len(j) != 1:
        raise NotPlain("a malformed value")
    (tag, v), = j.items()
    if tag == "r" and v in ("nan", "inf", "-inf"):
        return float(v)
    if type(v) is str and tag == "b":
        try:
            return bytes.fromhex(v)
        except ValueError:
            raise NotPlain("malformed bytes") from None
    if type(v) is not list:
        raise NotPlain("a malformed value")
    items = [decode(x, depth + 1) for x in v]
    try:
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
        if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in items):
            return {k: val for k, val in items}
        if tag == "c" and len(items) == 2 and all(type(x) in (int, float) for x in items):
            return complex(*items)
    except TypeError:                         # an unhashable key or member
        pass
    raise NotPlain("a malformed value")


# ---------------------------------------------------------------------------------------------------------------
# Frames
def read_exact(fd, n, deadline=None):
    chunks = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def read_frame(fd, deadline=None):
    n = struct.unpack(">I", read_exact(fd, 4, deadline))[0]
    if n > MAX_FRAME:
        raise ValueError(f"a frame of {n} bytes")
    return json.loads(read_exact(fd, n, deadline))


def write_frame(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# ---------------------------------------------------------------------------------------------------------------
# The children's confinement (runs in the child, before any graded or test code)
def confine(workdir, limits, keep, quiet):
    """Own session, no descriptor but `keep` (and 0-2: /dev/null, or the sandbox's pipes unless quiet), no new
    privileges, a fresh working directory, kernel limits (soft = hard), then the Python guards."""
    os.setsid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)      # the host's death takes the child with it
    if SYS_KEYCTL is not None:                                 # a session keyring of its own, gone with it
        libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    if quiet:
        os.dup2(null, 1)
        os.dup2(null, 2)
    last = 2
    for fd in sorted(keep):
        os.closerange(last + 1, fd)
        last = fd
    os.closerange(last + 1, 1 << 20)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    try:                            # when a job's cgroup runs out of memory, its own processes go first, not the host
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    install_guards(workdir)


def install_guards(root):
    """In-process guards (the only ones without bubblewrap; undoable from inside, see sandbox.py)."""
    import builtins
    import _io
    import posix
    own_pid = str(os.getpid())
    realpath, fsdecode = os.path.realpath, os.fsdecode

    def allowed(path, writing):
        if isinstance(path, int):            # an open file descriptor: it was checked when it was opened
            return True
        real = realpath(fsdecode(path))
        if writing:
            return real == root or real.startswith(root + os.sep)
        parts = real.split(os.sep)
        return not (len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_pid)

    def forbid(name):
        def forbidden(*args, **kwargs):
            raise SandboxViolation(f"{name} is disabled in the sandbox")
        return forbidden

    def confine_paths(name, fn, n_paths):
        def confined(*args, **kwargs):
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise SandboxViolation(f"{name} with dir_fd is disabled in the sandbox")
            for path in args[:n_paths]:
                if not allowed(path, writing=True):
                    raise SandboxViolation(f"{name} outside the sandbox directory: {path!r}")
            return fn(*args, **kwargs)
        return confined

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

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
            check_open("os.open", path, bool(flags & write_flags))
            return fn(path, flags, *args, **kwargs)
        return os_open

    class FileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            check_open("FileIO", file, any(c in str(mode) for c in "wax+"))
            super().__init__(file, mode, *args, **kwargs)

    forbidden = ("kill", "killpg", "fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp",
                 "pidfd_open", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "setsid",
                 "setpgid", "setpgrp", "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid",
                 "setresuid", "setresgid", "setgroups", "chroot", "chdir", "fchdir", "chmod", "fchmod", "lchmod",
                 "chown", "fchown", "lchown", "link", "symlink")
    confined = {"remove": 1, "unlink": 1, "rmdir": 1, "removedirs": 1, "mkdir": 1, "makedirs": 1, "rename": 2,
                "renames": 2, "replace": 2, "truncate": 1, "utime": 1, "mkfifo": 1, "mknod": 1}
    for module in (os, posix):
        for name in forbidden:
            if hasattr(module, name):
                setattr(module, name, forbid(f"os.{name}"))
        for name, n_paths in confined.items():
            if hasattr(module, name):
                setattr(module, name, confine_paths(f"os.{name}", getattr(module, name), n_paths))
        module.open = confined_os_open(module.open)
    builtins.open = io.open = _io.open = confined_open(io.open)
    io.FileIO = _io.FileIO = FileIO
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = forbid("signal.pidfd_send_signal")
    blocked = {"socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "subprocess", "_posixsubprocess",
               "multiprocessing", "_multiprocessing", "resource", "pty", "_pyio"}

    class BlockImports:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise SandboxViolation(f"import of {name} is disabled in the sandbox")
            return None

    sys.meta_path.insert(0, BlockImports())
    for name in list(sys.modules):
        if name.partition(".")[0] in blocked:
            del sys.modules[name]
    builtins.SandboxViolation = SandboxViolation


class SandboxViolation(PermissionError):
    """The program tried something the sandbox forbids."""


# ---------------------------------------------------------------------------------------------------------------
# The candidate (C): load the source, then answer calls with plain data
def exception_info(e):
    """(type name, message, names of its builtin bases) of an exception the candidate raised."""
    import builtins
    bases = [k.__name__ for k in type(e).__mro__ if getattr(builtins, k.__name__, None) is k]
    try:
        message = str(e)[:1000]
    except BaseException:
        message = "?"
    return type(e).__name__, message, bases


def describe(namespace):
    """What a test may import from the candidate's module: functions, exception classes, plain values."""
    import builtins
    names = {}
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, type) and issubclass(value, BaseException):
            names[name] = {"kind": "exception", "bases": [k.__name__ for k in value.__mro__
                                                          if getattr(builtins, k.__name__, None) is k]}
        elif isinstance(value, type):
            names[name] = {"kind": "class"}
        elif callable(value):
            names[name] = {"kind": "function"}
        else:
            try:
                names[name] = {"kind": "value", "value": encode(value)}
            except NotPlain:
                pass
    return names


def candidate(source, module_name, req_fd, resp_fd):
    sys.argv = ["program.py"]
    namespace = {"__name__": module_name, "__file__": "program.py", "__builtins__": __builtins__}
    if module_name != "__main__":
        import types
        module = types.ModuleType(module_name)
        namespace = module.__dict__
        namespace["__file__"] = f"{module_name}.py"
        sys.modules[module_name] = module
    try:
        exec(compile(source, f"{module_name}.py", "exec"), namespace)
        hello = {"names": describe(namespace)}
    except BaseException as e:
        kind, message, _ = exception_info(e)
        hello = {"raise": kind, "message": message}
    write_frame(resp_fd, hello)
    if "raise" in hello:
        return
    def answer(name, args, kwargs):
        try:
            value = namespace[name](*args, **kwargs)
        except BaseException as e:
            kind, message, bases = exception_info(e)
            return {"raise": kind, "message": message, "bases": bases}
        try:
            return {"value": encode(value), "args": encode(args)}
        except NotPlain as e:
            return {"not_plain": str(e)}

    while True:
        try:
            req = read_frame(req_fd)
        except EOFError:
            return
        if "batch" in req:                  # codesim: every call at once, one reply (a round trip each is slower)
            write_frame(resp_fd, {"replies": [answer(req["call"], decode(args), {}) for args in req["batch"]]})
        else:
            write_frame(resp_fd, answer(req["call"], decode(req["args"]), decode(req["kwargs"])))


# ---------------------------------------------------------------------------------------------------------------
# The host: fork, drive, kill, sweep
libc = ctypes.CDLL(None, use_errno=True)


def fork_child(run):
    """Fork a child that runs run() and exits; nothing of the host's Python state can stop that exit."""
    pid = os.fork()
    if pid == 0:
        try:
            run()
        except SystemExit as e:
            os._exit(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
            os._exit(1)
        os._exit(0)
    return pid


def children():
    """This host's living children (orphans of graded code included: the host is a subreaper)."""
    me, out = os.getpid(), []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        return out
    except OSError:
        pass
    for entry in os.listdir("/proc"):         # kernels without the children file
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def sweep(private):
    """Kill and reap every process below the host, until none is left. As the init of its own pid namespace (under
    bubblewrap), one kill(-1) reaches every other process in it at once, however deep its tree; else each round
    kills the host's children (orphans come back to it, a subreaper) until there is none, however many rounds."""
    everyone = private and os.getpid() == 1           # never kill(-1) outside a pid namespace of our own
    while True:
        if everyone:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            for pid in children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return                                     # no child, dead or alive: nothing is left below the host
        time.sleep(0.0005)


def end_of(pid):
    """How a child ended, or None if it is still running: ('exit', code) or ('signal', name)."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return ("gone", None)
    if not got:
        return None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("signal", signal.Signals(sig).name if sig in set(signal.Signals) else f"signal {sig}")
    return ("exit", os.WEXITSTATUS(status))


def kill_and_end(pid):
    end = end_of(pid)
    if end is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return end


def wipe(path):
    """Empty a directory whatever it holds, and say whether it is empty. No recursion (a program can leave a tree
    thousands deep) and no long paths: it walks down and up by descriptors, making each directory writable before
    it empties it. Never raises: what cannot be removed is left, and False says so."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    stack, skip = [], set()                # names of the directories above; entries here that resist removal
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o700 != 0o700:
            os.fchmod(fd, mode | 0o700)
        while True:
            down = None
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name in skip:
                            continue
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                down = entry.name
                                break
                            os.unlink(entry.name, dir_fd=fd)
                        except OSError:
                            skip.add(entry.name)
            except OSError:
                pass                       # unreadable: left, and the directory's removal fails below
            if down is not None:
                try:
                    os.chmod(down, 0o700, dir_fd=fd)
                    child = os.open(down, flags, dir_fd=fd)
                except OSError:
                    skip.add(down)
                    continue
                stack.append((down, skip))
                os.close(fd)
                fd, skip = child, set()
                continue
            if not stack:
                return not skip
            name, skip = stack.pop()
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                skip.add(name)
    except Exception:
        return False
    finally:
        os.close(fd)


# SysV IPC objects live as long as the IPC namespace (the host's): each job's are removed before the next one.
IPC_RMID = 0


def remove_ipc():
    """Remove every SysV message queue, semaphore set and shared memory segment in this IPC namespace; True when
    none is left."""
    removers = {"msg": lambda i: libc.msgctl(i, IPC_RMID, None), "sem": lambda i: libc.semctl(i, 0, IPC_RMID),
                "shm": lambda i: libc.shmctl(i, IPC_RMID, None)}
    clean = True
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                ids = [int(line.split()[1]) for line in f.readlines()[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            return False
        for ipc_id in ids:
            clean = remove(ipc_id) == 0 and clean
    return clean


# Keys outlive processes too: the user keyring of the uid lives as long as the user namespace (the host's).
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = 1, 7, -4, -5


def remove_keys():
    """Empty the uid's user and user-session keyrings; True when done (or the machine has no keyctl here)."""
    if SYS_KEYCTL is None:
        return True
    return all(libc.syscall(SYS_KEYCTL, KEYCTL_CLEAR, ring) == 0 or ctypes.get_errno() == 38     # ENOSYS
               for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING))


def reset(root, private):
    """Nothing of a job is left for the next one: its directory and, under bubblewrap, its /tmp, /dev/shm, POSIX
    message queues, SysV IPC and keys. False when something could not be removed: the host then stops, and the grader runs
    the rest of the batch in a fresh one."""
    clean = wipe(root)
    if private:
        for path in ("/tmp", "/dev/shm", "/dev/mqueue"):
            clean = wipe(path) and clean
        clean = remove_ipc() and clean
        clean = remove_keys() and clean
    return clean


class Job:
    def __init__(self, root, spec, index):
        self.dir = os.path.join(root, f"job{index}")
        os.mkdir(self.dir, 0o700)
        self.limits, self.spec = spec["limits"], spec


def start_candidate(job, source, module_name, quiet=True):
    """Fork C; returns (pid, request write fd, reply read fd)."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()

    def run():
        confine(job.dir, job.limits, {req_r, resp_w}, quiet)
        candidate(source, module_name, req_r, resp_w)
    pid = fork_child(run)
    os.close(req_r)
    os.close(resp_w)
    return pid, req_w, resp_r


def cpu_reason(end, job):
    if end == ("signal", "SIGXCPU"):
        return "timeout", f"CPU time limit of {job.spec['cpu_s']:g} s"
    if end and end[0] == "signal":
        return "crashed", f"killed by {end[1]}"
    return None


def run_calls(job, frame):
    """codesim: call the candidate's function on each argument list; the replies go back to the grader, which alone
    holds the expected values."""
    pid, req_w, resp_r = start_candidate(job, frame["source"], "__main__")
    deadline = time.monotonic() + job.spec["per_function_s"]
    out = {}
    try:
        hello = read_frame(resp_r, deadline)
        if "raise" in hello:
            out = {"error": f"{hello.get('raise')}: {hello.get('message')}"}
        else:
            write_frame(req_w, {"call": frame["name"], "batch": [encode(list(args)) for args in frame["calls"]]})
            replies = read_frame(resp_r, deadline)["replies"]
            if type(replies) is not list or len(json.dumps(replies)) > 1 << 20:
                raise ValueError("not a list of replies, or over 1 MiB")
            out = {"replies": replies}
    except TimeoutError:
        out = {"error": "timeout"}
    except (EOFError, ValueError, OSError, KeyError, TypeError, RecursionError) as e:
        out = {"error": f"the candidate ended or broke the protocol ({type(e).__name__})"}
    finally:
        os.close(req_w)
        os.close(resp_r)
        kill_and_end(pid)
    return out


def run_program(job, frame):
    """One whole program (sandbox.run): its own status report is relayed as it is, with its exit status."""
    status_r, status_w = os.pipe()

    def run():
        confine(job.dir, job.limits, {status_w}, quiet=False)
        program_main(frame["source"], status_w)
    pid = fork_child(run)
    os.close(status_w)
    deadline = time.monotonic() + job.spec["timeout_s"]
    status = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if select.select([status_r], [], [], min(left, 0.05))[0]:
            chunk = os.read(status_r, 4096)
            if chunk and len(status) < 4096:
                status += chunk[:4096 - len(status)]
                continue
        end = end_of(pid)
        if end is not None:
            while select.select([status_r], [], [], 0)[0] and len(status) < 4096:
                chunk = os.read(status_r, 4096)
                if not chunk:
                    break
                status += chunk[:4096 - len(status)]
            os.close(status_r)
            return {"status_bytes": status.decode("latin-1"), "end": list(end)}
    os.close(status_r)
    kill_and_end(pid)
    return {"timeout": True}


def program_main(source, status_fd):
    write = os.write

    def report(**end):
        write(status_fd, json.dumps(end).encode())
    try:
        code = compile(source, "program.py", "exec")
    except SyntaxError as e:
        report(end="exception", type="SyntaxError", message=str(e))
        raise
    sys.argv = ["program.py"]
    try:
        exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
    except SystemExit as e:
        report(end="exit", code=e.code if isinstance(e.code, int) or e.code is None else 1)
        raise
    except BaseException as e:
        report(end="exception", type=type(e).__name__, message=str(e)[:500])
        raise
    report(end="ok")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------------
# The test process (T): the benchmark's test code against a stand-in that asks C
class CandidateGone(BaseException):
    """The candidate's process ended or answered with something that is not a reply: the test cannot go on. A
    BaseException, so a test's `except Exception` or `pytest.raises(Exception)` cannot take it for a raise."""


class NotPlainResult(BaseException):
    """The candidate returned something that is not plain data (an object with its own __eq__, a generator...)."""


class Forbidden(BaseException):
    pass


def make_remote(req_w, resp_r, exceptions):
    import builtins

    def remote(name):
        def call(*args, **kwargs):
            try:
                write_frame(req_w, {"call": name, "args": encode(list(args)), "kwargs": encode(dict(kwargs))})
            except NotPlain as e:
                raise NotPlainResult(f"an argument of {name}() is {e}, which cannot cross to the sandboxed "
                                     f"function") from None
            except OSError:
                raise CandidateGone("the candidate's process has ended") from None
            try:
                reply = read_frame(resp_r)
            except (EOFError, OSError):
                raise CandidateGone("the candidate's process has ended") from None
            except (ValueError, RecursionError):
                raise CandidateGone("the candidate's reply is not a reply") from None
            if type(reply) is not dict:
                raise CandidateGone("the candidate's reply is not a reply")
            try:
                if "value" in reply:
                    value = decode(reply["value"])
                    after = decode(reply["args"])
                    for before, now in zip(args, after if type(after) is list else []):
                        if type(before) is list and type(now) is list:   # a function that sorts in place
                            before[:] = now
                        elif type(before) in (dict, set) and type(now) is type(before):
                            before.clear()
                            before.update(now)
                    return value
                if "not_plain" in reply:
                    raise NotPlainResult(f"{name}() returned {str(reply['not_plain'])[:100]}, not plain data")
                kind, message = str(reply["raise"]), str(reply.get("message", ""))
            except NotPlain as e:
                raise CandidateGone(f"the candidate's reply is {e}") from None
            except KeyError:
                raise CandidateGone("the candidate's reply is not a reply") from None
            if kind == "SandboxViolation":
                raise Forbidden(message)
            if kind == "MemoryError":
                raise Forbidden("memory limit (MemoryError)")
            if kind in exceptions:
                raise exceptions[kind](message)
            builtin = getattr(builtins, kind, None)
            if isinstance(builtin, type) and issubclass(builtin, Exception):
                raise builtin(message)
            for base in reply.get("bases", []) if type(reply.get("bases")) is list else []:
                builtin = getattr(builtins, str(base), None)
                if isinstance(builtin, type) and issubclass(builtin, Exception):
                    raise type(kind, (builtin,), {})(message)
            raise Exception(f"{kind}: {message}")
        call.__name__ = name
        return call
    return remote


def test_main(frame, req_w, resp_r, hello, out):
    """Run the test code. Returns (status, reason)."""
    import builtins
    import types
    names = hello.get("names") if type(hello.get("names")) is dict else {}
    exceptions = {}
    for name, info in names.items():
        if type(info) is dict and info.get("kind") == "exception" and str(name).isidentifier():
            base = next((getattr(builtins, b) for b in info.get("bases", [])
                         if isinstance(getattr(builtins, str(b), None), type)
                         and issubclass(getattr(builtins, str(b)), Exception)), Exception)
            exceptions[name] = type(name, (base,), {})
    remote = make_remote(req_w, resp_r, exceptions)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    if frame["style"] == "humaneval":
        namespace["__candidate__"] = remote(frame["entry_point"])
    else:
        solution = types.ModuleType("solution")
        public = []
        for name, info in names.items():
            if type(info) is not dict or not str(name).isidentifier():
                continue
            kind = info.get("kind")
            if kind == "function":
                setattr(solution, name, remote(name))
            elif kind == "exception":
                setattr(solution, name, exceptions[name])
            elif kind == "value":
                try:
                    setattr(solution, name, decode(info.get("value")))
                except NotPlain:
                    continue
            else:
                continue                          # a class: its instances would be objects the candidate controls
            if not name.startswith("_"):
                public.append(name)
        solution.__all__ = public
        sys.modules["solution"] = solution
    sys.stdout = sys.stderr = out
    try:
        exec(compile(frame["test"], "test.py", "exec"), namespace)
    except CandidateGone as e:
        return "gone", str(e)
    except NotPlainResult as e:
        return "failed", str(e)
    except Forbidden as e:
        return "crashed", str(e) if str(e).startswith("memory limit") else f"forbidden: {e}"
    except SandboxViolation as e:
        return "crashed", f"forbidden: {e}"
    except MemoryError:
        return "crashed", "memory limit (MemoryError)"
    except SystemExit as e:
        return "failed", f"the tests exited early (sys.exit({e.code!r}))"
    except BaseException as e:
        return "failed", f"{type(e).__name__}: {e}".splitlines()[0][:300] if str(e) else type(e).__name__
    return "passed", ""


class Capped(io.StringIO):
    def write(self, s):
        if self.tell() < 100_000:
            return super().write(s[:100_000 - self.tell()])
        return len(s)


def run_check(job, frame):
    """HumanEval / KodCode: C serves the candidate; T, forked next, reads its own test frame from stdin and runs the
    tests against C's plain replies. Returns the report; T's frame is consumed by T, never by the host."""
    pid_c, req_w, resp_r = start_candidate(job, frame["source"], frame["module"])
    verdict_r, verdict_w = os.pipe()

    def run_t():
        confine(job.dir, job.limits, {stdin, req_w, resp_r, verdict_w}, quiet=True)
        out = Capped()
        try:
            test = read_frame(stdin)
        except BaseException:
            write_frame(verdict_w, {"status": "crashed", "reason": "no test frame"})
            return
        try:
            hello = read_frame(resp_r)
        except (EOFError, ValueError, OSError, RecursionError):
            write_frame(verdict_w, {"status": "gone", "reason": "the candidate's process ended while loading"})
            return
        if type(hello) is not dict:
            hello = {}
        if "raise" in hello:
            status, reason = "failed", f"{hello.get('raise')}: {hello.get('message')}".splitlines()[0][:300]
            if hello.get("raise") == "SandboxViolation":
                status, reason = "crashed", f"forbidden: {hello.get('message')}"
            elif hello.get("raise") == "MemoryError":
                status, reason = "crashed", "memory limit (MemoryError)"
        else:
            status, reason = test_main(test, req_w, resp_r, hello, out)
        write_frame(verdict_w, {"status": status, "reason": reason, "stdout": out.getvalue()})
    stdin = os.dup(0)                              # T reads the test frame; C has already closed its copy
    pid_t = fork_child(run_t)
    os.close(stdin)
    os.close(verdict_w)
    deadline, desync = time.monotonic() + job.spec["timeout_s"], True   # until T reports, its frame may be half read
    try:
        verdict, desync = read_frame(verdict_r, deadline), False
    except TimeoutError:
        verdict = {"status": "timeout", "reason": f"wall-clock limit of {job.spec['timeout_s']:g} s"}
    except (EOFError, ValueError, OSError, RecursionError):
        verdict = {"status": "gone", "reason": "the test process ended without a verdict"}
    os.close(verdict_r)
    os.close(req_w)
    os.close(resp_r)
    end_t = kill_and_end(pid_t)
    end_c = kill_and_end(pid_c)
    if verdict.get("status") == "gone":
        verdict = {"status": "crashed", "reason": verdict.get("reason", ""), "stdout": verdict.get("stdout", "")}
        why = cpu_reason(end_c, job) or cpu_reason(end_t, job)
        if why:
            verdict["status"], verdict["reason"] = why
    verdict["desync"] = desync
    return verdict


def main():
    report = int(sys.argv[1])
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)       # no process of this user without CAP_SYS_PTRACE reads us
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    header = read_frame(0)
    root, private = header["dir"], header["private"]
    import gc
    gc.freeze()                     # the children do not copy the host's pages just to scan them
    for index in range(header["n"]):
        frame = read_frame(0)
        job = Job(root, header, index)
        if header["mode"] == "calls":
            result = run_calls(job, frame)
        elif header["mode"] == "check":
            result = run_check(job, frame)
        else:
            result = run_program(job, frame)
        sweep(private)
        write_frame(report, {"i": index, **result})
        if result.get("desync") or index == header["n"] - 1:
            return                  # the grader deletes the directory; after a desync it runs the rest anew
        if not reset(root, private):
            return                  # the grader runs the rest of the batch in a fresh host



if __name__ == "__main__":
    main()
