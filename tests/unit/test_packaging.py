"""Set-up and packaging: the torch build is an explicit choice, and Transformer Engine is pinned to the range
megatron-core 0.16.1 declares."""

import ast
import fnmatch
import importlib.metadata
import re
import subprocess
from pathlib import Path

from packaging.requirements import Requirement

from tide_megatron.models.transformer_engine import TE_REQUIREMENT

REPO = Path(__file__).resolve().parents[2]


def _setup_argument(name: str):
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == name))


def _extras() -> dict:
    return _setup_argument("extras_require")


def test_transformer_engine_is_pinned_to_megatron_cores_own_range():
    mcore = [Requirement(r) for r in importlib.metadata.requires("megatron-core")]
    (te,) = [r for r in mcore if r.name == "transformer-engine"]  # its `dev` extra
    assert str(te.specifier) == str(Requirement(f"x{TE_REQUIREMENT}").specifier)
    for extra, core in (("gpu", "core_cu12"), ("gpu-cu13", "core_cu13")):
        (req,) = [Requirement(r) for r in _extras()[extra]]
        assert req.name == "transformer-engine" and req.specifier == te.specifier
        assert {"pytorch", core} <= req.extras  # [pytorch] alone installs no TE core library


def test_setup_env_chooses_torch_by_an_explicit_switch():
    script = (REPO / "scripts" / "setup_env.sh").read_text()
    code = [ln for ln in script.splitlines() if not ln.lstrip().startswith("#")]
    assert not any("nvidia-smi" in ln for ln in code)  # never by sniffing the machine that runs set-up
    assert re.search(r'TIDE_TORCH="\$\{TIDE_TORCH:-cpu\}"', script)  # documented default: cpu
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup_env.sh")], env={"TIDE_TORCH": "gpu", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "TIDE_TORCH must be cpu or cuda, got 'gpu'" in proc.stderr


def test_package_data_ships_every_data_file_of_the_package():
    """A non-editable install carries the package's non-Python files (the presets config.py reads)."""
    package = REPO / "tide_megatron"
    patterns = _setup_argument("package_data")["tide_megatron"]
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert "presets.yaml" in data
    assert [d for d in data if not any(fnmatch.fnmatch(d, pattern) for pattern in patterns)] == []
