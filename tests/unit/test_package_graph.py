"""The package graph of docs/ARCHITECTURE.md is the code's: every import of our own modules, at the top of a
module or inside a function, goes where the graph says, and every module imports on its own (no cycle)."""

import ast
import re
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "tide_megatron"
GRAPH_INTRO = "The package graph"
#: Optional extras a module may need (GPU installs, the `eval` extra): missing here, not a defect.
OPTIONAL = ("transformer_engine", "lm_eval")


def documented_graph() -> list[tuple[list[str], dict[str, set[str]]]]:
    """The graph's rows, top to bottom: (the row's packages, {package: the imports its arrow lists})."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split(GRAPH_INTRO, 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in block.splitlines():
        names, _, note = line.strip().partition("  ")
        packages = [name.strip() for name in names.split(",")]
        arrowed = re.findall(r"\(([^()]*→[^()]*)\)", note)  # "(fixtures → atomic)"
        plain = re.sub(r"\([^()]*\)", "", note)  # "→ data (compatibility), losses" -> "→ data , losses"
        arrows = {}
        for segment in arrowed + plain.split(";"):
            if "→" not in segment:
                continue
            before, after = segment.split("→", 1)
            subject = before.split()[-1] if before.split() else packages[0]
            assert before.split() or len(packages) == 1, f"ARCHITECTURE.md: whose arrow is {line.strip()!r}?"
            arrows[subject] = {target.split()[0] for target in after.split(",") if target.strip()}
        rows.append((packages, arrows))
    return rows


def _package_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def code_graph() -> dict[str, dict[str, set[str]]]:
    """{package: {imported package: the files importing it}}, type-checking-only imports left out."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        type_only = {id(node) for test in ast.walk(tree) if isinstance(test, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(test.test) for node in ast.walk(test)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] if node.module != "tide_megatron" else [f"tide_megatron.{a.name}"
                                                                               for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "tide_megatron" and len(parts) > 1 and parts[1] != _package_of(path):
                    edges[_package_of(path)][parts[1]].add(str(path.relative_to(REPO)))
    return edges


def test_the_documented_package_graph_is_the_codes():
    rows = documented_graph()
    row_of = {package: i for i, (packages, _) in enumerate(rows) for package in packages}
    arrows = {package: targets for _, listed in rows for package, targets in listed.items()}
    edges = code_graph()
    packages = {_package_of(p) for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert set(row_of) == packages - {"__init__"}, "every package on exactly one row of the graph"
    wrong = []
    for package, targets in sorted(edges.items()):
        for target, files in sorted(targets.items()):
            allowed = target in arrows[package] if package in arrows else row_of[target] > row_of[package]
            if not allowed:
                wrong.append(f"{package} -> {target} ({', '.join(sorted(files))})")
    assert not wrong, "imports the graph does not show:\n" + "\n".join(wrong)
    for package, targets in arrows.items():
        assert set(edges.get(package, {})) == targets, f"{package}: the graph lists {sorted(targets)}, the code " \
                                                        f"imports {sorted(edges.get(package, {}))}"
        upward = [t for t in targets if row_of[t] < row_of[package] or package in edges.get(t, {})]
        assert not upward, f"{package} -> {upward}: an arrow up, or both ways"


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    """``import tide_megatron.<module>`` as the first import of ours, for every module: an import cycle or a
    missing import fails here whatever order the rest of the suite imports things in."""
    script = textwrap.dedent(f"""
        import importlib, sys
        from pathlib import Path
        root = Path({str(REPO)!r})
        modules = sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                         for p in (root / "tide_megatron").rglob("*.py"))
        for module in modules:
            for name in [n for n in sys.modules if n == "tide_megatron" or n.startswith("tide_megatron.")]:
                del sys.modules[name]
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                if (err.name or "").split(".")[0] not in {OPTIONAL!r}:
                    print(f"FAIL {{module}}: {{type(err).__name__}}: {{err}}")
            except Exception as err:
                print(f"FAIL {{module}}: {{type(err).__name__}}: {{err}}")
        print(f"imported {{len(modules)}} modules")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert not failures and "imported" in proc.stdout, "\n".join(failures) or proc.stdout[-2000:]
