"""Graded code cannot write its own verdict: each forgery of issue 18, through the real graders (HumanEval, KodCode,
codesim), on a function that is wrong. Each of these passed before the graders decided verdicts outside the
candidate's process; the last tests check that the boundary keeps what honest tests need."""
import os

import pytest

import code_bench as cb
import codesim as cs

# Writes a well-formed "the program ended fine" on every inherited descriptor, then exits 0.
FORGE_FDS = ("import os as _os\nfor _fd in sorted(map(int, _os.listdir('/proc/self/fd'))):\n    if _fd > 2:\n"
             "        try:\n            _os.write(_fd, b'{\"end\": \"ok\"}')\n        except OSError:\n"
             "            pass\n"
             "_os._exit(0)\n")
UNGUARD = "import sys as _sys\ndel _sys.modules['posix']\nimport posix as _posix\n"
ALWAYS_EQUAL = "class _Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"


@pytest.fixture(scope="module")
def humaneval():
    return cb.load_humaneval()[0]               # has_close_elements(numbers, threshold) -> bool


def _passed(results):
    return [r.status == "passed" for r in results]


HUMANEVAL_WRONG = "    return True\n"
HUMANEVAL_FORGERIES = {
    "status on every fd": HUMANEVAL_WRONG + FORGE_FDS,
    "__eq__ always true": "    return _Any()\n" + ALWAYS_EQUAL,
    "atexit": HUMANEVAL_WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "harness frames rewritten": "    import sys\n    for depth in range(1, 8):\n        try:\n"
                                "            frame = sys._getframe(depth)\n        except ValueError:\n"
                                "            break\n"
                                "        frame.f_globals['check'] = lambda candidate: None\n    return True\n",
    "kill -9 of the parent": HUMANEVAL_WRONG + UNGUARD + "_posix.kill(_posix.getppid(), 9)\n"}


@pytest.mark.parametrize("forgery", HUMANEVAL_FORGERIES)
def test_humaneval_forgeries_fail(humaneval, forgery):
    results = cb.run_tests([humaneval] * 3, [HUMANEVAL_FORGERIES[forgery], humaneval.solution, "    return False\n"],
                       workers=1)
    assert _passed(results) == [False, True, False], [(r.status, r.reason) for r in results]
    if forgery == "__eq__ always true":
        assert "not plain data" in results[0].reason


KOD = {"question": "Sum xs, each clipped at hi.", "entry_point": "clip_sum",
       "test": "from solution import clip_sum\n\ndef test_a():\n    assert clip_sum([1, 2, 3], 2) == 5\n\n"
               "def test_b():\n    assert clip_sum([], 5) == 0\n"}
KOD_WRONG = "def clip_sum(xs, hi):\n    return -1\n"
KOD_RIGHT = "def clip_sum(xs, hi):\n    return sum(min(x, hi) for x in xs)\n"
KODCODE_FORGERIES = {
    "status on every fd": KOD_WRONG + FORGE_FDS,
    "_run_tests replaced through a frame": "import sys\nsys._getframe(1).f_globals['_run_tests'] = lambda ns: None\n"
                                           + KOD_WRONG,
    "__eq__ always true": ALWAYS_EQUAL + "def clip_sum(xs, hi):\n    return _Any()\n",
    "atexit": KOD_WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "kill -9 of the parent": UNGUARD + "_posix.kill(_posix.getppid(), 9)\n" + KOD_WRONG}


def _kodcode(tmp_path, records):
    import json
    path = tmp_path / "k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return cb.load_kodcode(str(path))


@pytest.mark.parametrize("forgery", KODCODE_FORGERIES)
def test_kodcode_forgeries_fail(tmp_path, forgery):
    task = _kodcode(tmp_path, [KOD])[0]
    results = cb.run_tests([task] * 3, [KODCODE_FORGERIES[forgery], KOD_RIGHT, KOD_WRONG], workers=1)
    assert _passed(results) == [False, True, False], [(r.status, r.reason) for r in results]


def _codesim_task():
    return next(t for t in cs.generate_codesim(20, 3, "test") if not t.two_lists)


CODESIM_FORGERIES = {
    # an atexit handler printing a verdict for every function of the batch (it counts them in the harness)
    "atexit": "import atexit, sys\n_n = len(sys._getframe(1).f_globals.get('SOURCES', []))\n"
              "atexit.register(lambda: print('[' + ', '.join(['true'] * _n) + ']'))\n",
    # a lookup table of the expected values, read from the harness's TESTS
    "TESTS through frames": "def {name}(xs):\n    import sys\n    for depth in range(1, 8):\n        try:\n"
                            "            g = sys._getframe(depth).f_globals\n        except ValueError:\n"
                            "            break\n        for args, expected in g.get('TESTS', ()):\n"
                            "            if list(args[0]) == xs:\n                return expected\n    return None\n",
    "status on every fd": FORGE_FDS,
    "__eq__ always true": ALWAYS_EQUAL + "def {name}(xs):\n    return _Any()\n",
    "an int whose __eq__ is always true": "class _I(int):\n    def __eq__(self, other):\n        return True\n"
                                          "    __hash__ = int.__hash__\n\ndef {name}(xs):\n    return [_I(0)]\n",
    "kill -9 of the parent": UNGUARD + "_posix.kill(_posix.getppid(), 9)\n"}


@pytest.mark.parametrize("forgery", CODESIM_FORGERIES)
def test_codesim_forgeries_fail_and_touch_no_other_verdict(forgery):
    task = _codesim_task()
    wrong = f"def {task.name}(xs):\n    return 'wrong'\n"
    forged = CODESIM_FORGERIES[forgery].replace("{name}", task.name)
    forged = forged if "def " in forged else wrong + forged
    codes = [forged, f"def {task.name}(xs):\n    return 'another wrong function'\n", cs.reference_source(task)]
    assert cs.codesim_verdicts([task] * 3, codes) == [False, False, True]


def test_the_boundary_keeps_what_honest_tests_need(tmp_path):
    test = ("import pytest\nfrom solution import *\n\n"
            "def test_raises_builtin():\n    with pytest.raises(ValueError, match='negative'):\n        parse(-1)\n\n"
            "def test_raises_own():\n    with pytest.raises(TooBig):\n        parse(1000)\n\n"
            "def test_raises_own_as_base():\n    with pytest.raises(ArithmeticError):\n        parse(1000)\n\n"
            "def test_in_place():\n    xs = [3, 1, 2]\n    assert sort_in_place(xs) is None\n"
            "    assert xs == [1, 2, 3]\n\n"
            "def test_values():\n    assert parse(2) == (2, {'k': [1.5, None]}, {3}, b'x')\n    assert LIMIT == 999\n")
    solution = ("LIMIT = 999\n\nclass TooBig(OverflowError):\n    pass\n\n"
                "def parse(n):\n    if n < 0:\n        raise ValueError('negative')\n    if n > LIMIT:\n"
                "        raise TooBig(n)\n    return (n, {'k': [1.5, None]}, {3}, b'x')\n\n"
                "def sort_in_place(xs):\n    xs.sort()\n")
    task = _kodcode(tmp_path, [{"question": "q", "test": test, "entry_point": "parse"}])[0]
    results = cb.run_tests([task, task], [solution, solution.replace("xs.sort()", "xs.reverse()")], workers=2)
    assert (results[0].status, results[0].stdout.strip()) == ("passed", "5 of 5 tests passed"), results[0]
    assert results[1].status == "failed" and "test_in_place" in results[1].reason


def test_a_test_that_needs_the_solutions_own_objects_fails_with_a_reason(tmp_path):
    test = "from solution import make\n\ndef test_it():\n    assert make().value == 1\n"
    solution = "class Box:\n    value = 1\n\ndef make():\n    return Box()\n"
    task = _kodcode(tmp_path, [{"question": "q", "test": test, "entry_point": "make"}])[0]
    result = cb.run_tests([task], [solution])[0]
    assert result.status == "failed" and "not plain data" in result.reason, result


def test_no_process_of_a_graded_batch_outlives_it(tmp_path):
    marker = "61.0042"
    escape = (UNGUARD + "_pid = _posix.fork()\nif _pid == 0:\n    _posix.setsid()\n"
              f"    _posix.execv('/bin/sleep', ['sleep', '{marker}'])\n")
    task = _kodcode(tmp_path, [KOD])[0]
    results = cb.run_tests([task, task], [KOD_RIGHT + escape, KOD_RIGHT], workers=1)
    assert _passed(results) == [True, True]
    assert cs.codesim_verdicts([_codesim_task()], [escape]) == [False]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert marker.encode() not in f.read(), f"process {pid} outlived the grading"
        except OSError:
            pass


BWRAP = __import__("sandbox").isolation()[0] == "bwrap"


@pytest.mark.skipif(not BWRAP and os.environ.get("EXECTUNE_REQUIRE_DEV") != "1",
                    reason="bubblewrap is not usable here: the fallback does not promise this")
def test_under_bubblewrap_no_other_process_of_the_sandbox_can_be_written_or_read(tmp_path):
    # A forged report frame into every descriptor of every other process it can see (the host's report pipe, the
    # test process's verdict pipe), and a read of their memory: all refused (not dumpable, no CAP_SYS_PTRACE).
    assert BWRAP, "bubblewrap is not usable here"
    frame = b'{"i": 0, "status": "passed", "reason": ""}'
    attack = (UNGUARD + "import struct as _struct\n_opened = []\n"
              "for _pid in [p for p in _posix.listdir('/proc') if p.isdigit() and int(p) != _posix.getpid()]:\n"
              "    for _name in ['mem'] + [f'fd/{n}' for n in range(64)]:\n        try:\n"
              f"            _fd = _posix.open(f'/proc/{{_pid}}/{{_name}}', _posix.O_RDWR)\n"
              f"            _opened.append(_name)\n"
              f"            _posix.write(_fd, _struct.pack('>I', {len(frame)}) + {frame!r})\n"
              "        except OSError:\n            pass\n"
              "def clip_sum(xs, hi):\n    return len(_opened)\n")
    task = _kodcode(tmp_path, [KOD])[0]
    results = cb.run_tests([task, task], [attack, KOD_RIGHT], workers=1)
    assert _passed(results) == [False, True], [(r.status, r.reason) for r in results]
    # clip_sum returns how many it opened: test_b (expects 0) passes, test_a (expects 5) fails
    assert "1 of 2 tests failed; first: test_a" in results[0].reason, results[0].reason


@pytest.mark.skipif(not BWRAP and os.environ.get("EXECTUNE_REQUIRE_DEV") != "1",
                    reason="bubblewrap is not usable here: without a pid namespace this would kill the machine")
def test_under_bubblewrap_a_program_killing_every_process_it_sees_fails_alone(tmp_path):
    assert BWRAP, "bubblewrap is not usable here"
    killer = (UNGUARD + "for _pid in range(1, 64):\n    if _pid != _posix.getpid():\n        try:\n"
              "            _posix.kill(_pid, 9)\n        except OSError:\n            pass\n" + KOD_WRONG)
    task = _kodcode(tmp_path, [KOD])[0]
    results = cb.run_tests([task] * 4, [KOD_RIGHT, killer, KOD_RIGHT, KOD_WRONG], workers=1)
    assert _passed(results) == [True, False, True, False], [(r.status, r.reason) for r in results]
    humaneval = cb.load_humaneval()[0]
    results = cb.run_tests([humaneval] * 2, ["    return True\n" + killer.replace(KOD_WRONG, ""), humaneval.solution])
    assert _passed(results) == [False, True], [(r.status, r.reason) for r in results]
