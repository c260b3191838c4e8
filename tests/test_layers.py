"""The architecture as a contract: layers (import-linter, configured in pyproject.toml), no import
cycle between modules, the old module paths and the public names, and a ``--help`` that imports
neither torch nor Lightning."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import grimp
import pytest

from tests.helpers import REPO

PACKAGES = ("vidlit", "strategies", "datamodules")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_layers_contract_holds():
    """``lint-imports``: each layer imports only from the layers below it (pyproject.toml)."""
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_the_contract_catches_an_upward_import(tmp_path):
    """The check itself works: an upward import added to a copy of the package breaks it."""
    import shutil

    for pkg in PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
    with open(tmp_path / "vidlit" / "run" / "files.py", "a") as fh:
        fh.write("\nfrom vidlit.callbacks.history import HistoryCallback  # noqa\n")
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([exe], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "vidlit.run is not allowed to import vidlit.callbacks" in proc.stdout, proc.stdout[-2000:]


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


#: vidlit 0.1's module paths and a name each that user plugins and scripts imported from them
OLD_PATHS = {
    "vidlit.strategy": ("Strategy", "vidlit.models.strategy"),
    "vidlit.backbones": ("register_backbone", "vidlit.models.backbones"),
    "vidlit.errors": ("VidlitError", "vidlit.utils.errors"),
    "vidlit.losses": ("coral_penalty", "vidlit.models.losses"),
    "vidlit.cli": ("checkpoint_settings", "vidlit.run.checkpoint"),
    "vidlit.results": ("RESULTS_FILE", "vidlit.run.files"),
    "vidlit.saliency": ("ForegroundShare", "vidlit.callbacks.saliency"),
    "vidlit.export": ("load_trained", "vidlit.inference.trained"),
    "vidlit.averaging": ("WeightAveraging", "vidlit.callbacks.averaging"),
    "vidlit.callbacks": ("fault_point", "vidlit.utils.fault"),
    "vidlit.predictions": ("RunInfoCallback", "vidlit.callbacks.checkpoint"),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_paths_still_import(old):
    name, new = OLD_PATHS[old]
    module = importlib.import_module(old)
    expected = importlib.import_module(new)
    assert getattr(module, name) is getattr(expected, "RunStampCallback" if name == "RunInfoCallback" else name)


def test_every_moved_module_resolves():
    from vidlit._compat import MOVED

    for old, target in MOVED.items():
        module = importlib.import_module(old)
        names = target[1] if isinstance(target, tuple) else {}
        for name in names:
            assert getattr(module, name) is not None, (old, name)


PUBLIC = ("Strategy", "register_strategy", "Backbone", "register_backbone", "MultiDomainDataModule",
          "register_datamodule", "VideoRecord", "VidlitError")


def test_public_names_are_reexported():
    import vidlit

    for name in PUBLIC:
        assert getattr(vidlit, name).__name__ == name
    assert issubclass(vidlit.Strategy, __import__("lightning").pytorch.LightningModule)


def test_help_and_report_import_neither_torch_nor_lightning(tmp_path):
    """``--help`` and ``report`` stay fast: they import no more than they need."""
    code = ("import sys, runpy; sys.argv = ['vidlit'] + sys.argv[1:]\n"
            "from vidlit.commands.main import main\n"
            "code = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'torchvision'))\n"
            "print('HEAVY', heavy[:5])\n")
    from benchmarks.cli import make_runs

    make_runs(str(tmp_path / "runs"), n_targets=2, n_seeds=2)
    for argv in (["--help"], ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert "HEAVY []" in proc.stdout, (argv, proc.stdout[-1500:], proc.stderr[-1500:])


def test_plugin_discovery_is_not_fooled_by_another_package_of_the_same_name(tmp_path):
    """A package named ``strategies`` earlier on ``sys.path`` (a common name) is not vidlit's folder."""
    fake = tmp_path / "strategies"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "impostor.py").write_text("raise SystemExit('the wrong strategies package was imported')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from vidlit.models.strategy import STRATEGIES\n"
            "names = STRATEGIES.names()\n"
            "import strategies\n"
            "print('NAMES', names, strategies.__file__)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'erm'" in proc.stdout and "'dann'" in proc.stdout
    assert os.path.join(REPO, "strategies", "__init__.py") in proc.stdout


def test_report_reads_every_strategys_defaults_from_its_source_as_the_class_has_them():
    """``report`` compares settings with each strategy's defaults without importing torch: the
    defaults read from the source equal the imported class's, for every registered strategy."""
    import inspect

    from vidlit.commands import report
    from vidlit.models.strategy import STRATEGIES, Strategy

    for name in STRATEGIES.names():
        assert report._declared_chain(name) is not None, name
        expected = {}
        for klass in reversed(STRATEGIES.get(name).__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    expected[f"model.{p.name}"] = p.default
        assert report._strategy_defaults(name) == expected, name
    params = {f"model.{n}" for n in inspect.signature(Strategy.__init__).parameters if n not in ("self", "args", "kwargs")}
    assert report._strategy_params() == params
