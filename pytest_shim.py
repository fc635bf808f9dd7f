"""pytest stand-in and test runner, never imported: read as text, run in the sandbox ahead of a task's tests."""
import itertools, re, sys, types

class _Skipped(Exception):
    pass

class _Raises:
    def __init__(self, expected, match=None):
        self.expected, self.match, self.value = expected, match, None
    def __enter__(self):
        return self
    def __exit__(self, kind, value, tb):
        if kind is None:
            raise AssertionError(f"DID NOT RAISE {self.expected}")
        if not issubclass(kind, self.expected):
            return False
        if self.match is not None and not re.search(self.match, str(value)):
            raise AssertionError(f"{str(value)!r} does not match {self.match!r}")
        self.value = value
        return True

def _close(a, b, rel, abs_):
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_close(x, y, rel, abs_) for x, y in zip(a, b))
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel, abs_) for k in b)
    if isinstance(b, (int, float)) and isinstance(a, (int, float)):
        return abs(a - b) <= max(rel * abs(b), abs_)
    return a == b

class _Approx:
    def __init__(self, expected, rel=None, abs=None):
        self.expected, self.rel, self.abs = expected, 1e-6 if rel is None else rel, 1e-12 if abs is None else abs
    def __eq__(self, other):
        return _close(other, self.expected, self.rel, self.abs)
    def __repr__(self):
        return f"approx({self.expected!r})"

class _Mark:
    def parametrize(self, names, values, ids=None, **kwargs):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        rows = [tuple(v) if len(names) > 1 else (v,) for v in values]
        def mark(fn):
            fn._params = getattr(fn, "_params", []) + [[dict(zip(names, row)) for row in rows]]
            return fn
        return mark
    def __getattr__(self, name):          # skip, xfail, timeout, ...: accepted and ignored
        def factory(*args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            return lambda fn: fn
        return factory

def _fixture(fn=None, **kwargs):
    def mark(f):
        f._fixture = True
        return f
    return mark(fn) if callable(fn) else mark

def _skip(reason=""):
    raise _Skipped(reason)

def _param(*values, **kwargs):
    return values if len(values) > 1 else values[0]

pytest = types.ModuleType("pytest")
pytest.raises, pytest.approx, pytest.mark, pytest.fixture = _Raises, _Approx, _Mark(), _fixture
pytest.skip, pytest.param, pytest.fail = _skip, _param, lambda reason="": (_ for _ in ()).throw(AssertionError(reason))
sys.modules["pytest"] = pytest

def _run_tests(namespace):
    fixtures = {n: f for n, f in namespace.items() if getattr(f, "_fixture", False)}
    tests = [(n, f) for n, f in list(namespace.items())
             if n.startswith("test") and isinstance(f, types.FunctionType) and not getattr(f, "_fixture", False)]
    for cname, cls in list(namespace.items()):
        if cname.startswith("Test") and isinstance(cls, type):
            tests += [(f"{cname}.{n}", getattr(cls(), n)) for n in dir(cls) if n.startswith("test")]
    failures, total = [], 0
    for name, fn in tests:
        code = fn.__code__
        wanted = code.co_varnames[int(hasattr(fn, "__self__")):code.co_argcount]
        for combo in itertools.product(*getattr(fn, "_params", [])):
            kwargs = {k: v for part in combo for k, v in part.items()}
            for arg in wanted:
                if arg not in kwargs:
                    if arg not in fixtures:
                        raise AssertionError(f"{name}: unsupported fixture {arg!r}")
                    value = fixtures[arg]()
                    kwargs[arg] = next(value) if isinstance(value, types.GeneratorType) else value
            total += 1
            try:
                fn(**kwargs)
            except _Skipped:
                total -= 1
            except Exception as e:
                if type(e).__name__ in ("SandboxViolation", "MemoryError"):
                    raise                     # the sandbox classifies these, not the test runner
                failures.append(f"{name}: {type(e).__name__}: {e}")
    print(f"{total - len(failures)} of {total} tests passed")
    if total == 0:
        raise AssertionError("no test functions ran")
    if failures:
        raise AssertionError(f"{len(failures)} of {total} tests failed; first: {failures[0]}"[:500])
