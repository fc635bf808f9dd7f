"""The layout a reader relies on: the project's modules import one another one way (no cycle, and never a file of a
higher layer: the README's rule), only at the top of a file, and importing them changes nothing process-wide."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))
SHIMS = {"pytest_shim"}   # read as text and run inside the sandbox ahead of a task's tests, never imported
# The README's layers, lowest first (The order to read the code): a file imports only its own layer or lower ones.
LAYERS = [{"model", "generate", "tokenizer", "checkpoint", "hf"},                          # the guide
          {"core_client"},                                                                 # the client
          {"strategy_format", "mathsim", "gsm8k", "sandbox", "sandbox_host", "code_bench", "codesim"},   # task worlds
          {"sim_math", "sim_code", "families", "sim_core"},                   # the simulated models, families
          {"grpo", "sample", "sft", "training", "execute", "evaluate", "exectune", "config", "run_dir"}]   # recipe


def project_imports(tree):
    """(module imported, whether at the top level) for every import of a project module in a parsed file."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in MODULES:
                yield name.split(".")[0], id(node) in top


def graph():
    edges = {}
    for name in MODULES:
        with open(os.path.join(ROOT, name + ".py")) as f:
            edges[name] = list(project_imports(ast.parse(f.read())))
    return edges


def test_the_project_has_modules_to_check():
    assert {"exectune", "model", "grpo", "core_client"} <= set(MODULES)


def test_every_module_has_a_layer_and_imports_none_above_it():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    assert set(MODULES) - SHIMS == set(layer), "a module missing from LAYERS, or a stale name there"
    upward = [(name, dep) for name, deps in graph().items() if name in layer
              for dep, _ in deps if layer[dep] > layer[name]]
    assert upward == [], f"imports of a higher layer: {upward}"


def test_project_imports_are_at_the_top_of_each_file():
    nested = [(name, dep) for name, deps in graph().items() for dep, at_top in deps if not at_top]
    assert nested == [], f"imports of project modules inside a function or block: {nested}"


def test_no_import_cycle():
    edges = {name: {dep for dep, _ in deps} for name, deps in graph().items()}
    state = {}      # name -> "open" while on the DFS path, "done" after

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = path[path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for dep in sorted(edges[name]):
            visit(dep, path + [name])
        state[name] = "done"

    for name in MODULES:
        visit(name, [])


def test_the_sandbox_shims_are_never_imported():
    importers = [(name, dep) for name, deps in graph().items() for dep, _ in deps if dep in SHIMS]
    assert importers == []


def test_a_cycle_would_be_found(monkeypatch):
    """The checker itself: a graph with a cycle fails."""
    fake = {name: [] for name in MODULES}
    fake["model"], fake["grpo"] = [("grpo", True)], [("model", True)]
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: fake)
    try:
        test_no_import_cycle()
    except AssertionError as e:
        assert "model" in str(e) and "grpo" in str(e)
    else:
        raise AssertionError("a cycle went unnoticed")


def test_importing_every_module_changes_no_process_wide_hook():
    modules = [m for m in MODULES if m not in SHIMS]
    code = ("import sys, threading\nhooks = (sys.excepthook, threading.excepthook, sys.displayhook)\n"
            + "".join(f"import {m}\n" for m in modules)
            + "assert (sys.excepthook, threading.excepthook, sys.displayhook) == hooks, 'a hook was replaced'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
