"""The CLI's shape: every face registers its subcommands; the CLI starts without the optional extras;
nothing inside privmed imports the CLI; imports between privmed modules form no cycle (module-level,
function-local and importlib strings alike)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import privmed
from privmed.cli import build_parser
from privmed.training.recipe import train_config, train_parser

SRC = Path(privmed.__file__).resolve().parent
EXTRAS = ("fastapi", "uvicorn", "streamlit", "flwr", "onnxruntime", "matplotlib", "sqlalchemy")
HEAVY = ("torch", "opacus")  # core, but seconds to import: `privmed --help` must not wait for them
# subcommands of `privmed` and of `privmed privacy`, by the module that registers them
COMMANDS = {"core": ["data", "cache", "bundle", "train", "evaluate", "predict", "calibrate", "models", "privacy"],
            "evaluation": ["report"], "federated": ["federate"],
            "api": ["api", "keys", "log", "onnx", "quantize"], "app": ["app"], "hospital": ["deid", "label", "pacs"]}
PRIVACY_COMMANDS = ["account", "budget", "audit"]


def _privmed(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; ``block`` makes those packages unimportable, as in an install
    without the extras, and the run fails if any of ``EXTRAS`` or ``HEAVY`` was imported anyway."""
    code = (f"import sys\nfor m in {block!r}: sys.modules[m] = None\n"
            "from privmed.cli import main\n"
            "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            f"loaded = sorted(m for m in {EXTRAS + HEAVY!r} if sys.modules.get(m) is not None)\n"
            "assert not loaded, f'imported at start-up: {loaded}'\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def _listed(help_text: str) -> list[str]:
    """The subcommand names in argparse's ``{a,b,c}`` line of a help text."""
    return re.search(r"\{([a-z,-]+)\}", help_text).group(1).split(",")


@pytest.mark.parametrize("block", [(), EXTRAS], ids=["installed", "without-extras"])
def test_help_lists_every_face_and_loads_no_extra(block):
    top = _privmed("--help", block=block)
    assert top.returncode == 0, top.stderr
    assert _listed(top.stdout) == [c for cmds in COMMANDS.values() for c in cmds]
    priv = _privmed("privacy", "--help", block=block)
    assert priv.returncode == 0, priv.stderr
    assert _listed(priv.stdout) == PRIVACY_COMMANDS


def test_a_face_without_its_extra_says_what_to_install():
    r = _privmed("federate", "--dataset", "x", block=("flwr",))
    assert r.returncode == 2 and "pip install" in r.stderr and "Traceback" not in r.stderr


def test_python_dash_m_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "privmed.cli", "privacy", "account", "--sigma", "1", "--sample-rate",
                        "0.01", "--steps", "100", "--delta", "1e-5", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"epsilon"' in r.stdout


def _imports(path: Path, name: str, strings: bool) -> set[str]:
    """Modules named by a file's imports, anywhere in it (module level or inside functions), and with
    ``strings`` by ``"privmed.x.y"`` strings (importlib)."""
    is_pkg = path.name == "__init__.py"
    out = set(re.findall(r"""['"](privmed(?:\.\w+)+)['"]""", path.read_text())) if strings else set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _module_graph(strings: bool = True) -> dict[str, set[str]]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return {m: {t for t in _imports(f, m, strings) if t in mods and t != m} for m, f in mods.items()}


def test_nothing_inside_privmed_imports_the_cli():
    graph = _module_graph(strings=False)  # strings: `python -m privmed.cli` starts it as a process
    users = {m: sorted(t for t in deps if t == "privmed.cli" or t.startswith("privmed.cli."))
             for m, deps in graph.items() if not (m == "privmed.cli" or m.startswith("privmed.cli."))}
    assert {m: t for m, t in users.items() if t} == {}


def test_no_module_imports_the_package_root():
    """``privmed/__init__.py`` is the facade: it imports downward, nothing imports it back."""
    assert sorted(m for m, deps in _module_graph().items() if "privmed" in deps) == []


def test_no_import_cycles():
    graph, cycles = _module_graph(), []
    index, low, stack, on = {}, {}, [], set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_train_recipe_parser_is_the_cli_train_parser():
    """The benchmark reads a printed ``privmed train ...`` back with ``train_parser``: it must take
    exactly the CLI's flags and build the same config."""
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    cli_train = sub.choices["train"]
    flags = lambda p: sorted(s for a in p._actions for s in a.option_strings)  # noqa: E731
    assert flags(cli_train) == flags(train_parser())
    argv = ["--dataset", "covid19_xray", "--model", "cnn", "--epsilon", "4", "--clahe", "--no-augment",
            "--set", "augment.zoom=0.2", "--set", "preprocess.size=64", "--device", "cpu"]
    via_cli = train_config(build_parser().parse_args(["train", *argv]))
    assert via_cli.model_dump() == train_config(train_parser().parse_args(argv)).model_dump()
    assert (via_cli.model, via_cli.privacy.epsilon, via_cli.preprocess.size, via_cli.augment.zoom) == \
        ("cnn", 4.0, 64, 0.2)


def test_version_comes_from_the_installed_metadata():
    assert privmed.__version__ == importlib.metadata.version("privmed")
    from privmed.bundle.format import versions

    assert versions()["privmed"] == privmed.__version__
