"""The architecture as the code must keep it: layers import downward only, settings and
data tools load without TensorFlow, no source file grows past what a reader can hold."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = ["src/model", "src/data", "src/active_learning", "src/settings.py", "src/training.py",
        "src/evaluation.py", "src/metrics.py", "src/task_groups.py", "src/atomic_files.py"]
ABOVE_CORE = ("src.federated", "src.deploy", "src.cli", "workspace", "tools", "bench")
MAX_LINES = 500

BLOCK_TENSORFLOW = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'keras_cv', 'openfl'):
            raise ImportError('blocked by the test: ' + name)
sys.meta_path.insert(0, Block())
"""


def python_files(*roots):
    for root in roots:
        path = REPO / root
        yield from ([path] if path.suffix == ".py" else sorted(path.rglob("*.py")))


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def test_the_core_imports_no_adapter_orchestration_or_entry_point():
    upward = [f"{path.relative_to(REPO)} imports {module}" for path in python_files(*CORE)
              for module in imported_modules(path)
              if module.startswith(ABOVE_CORE)]
    assert not upward, upward


def test_the_adapters_import_no_orchestration():
    upward = [f"{path.relative_to(REPO)} imports {module}" for path in python_files("src/federated")
              for module in imported_modules(path) if module.startswith(("workspace", "src.cli", "tools"))]
    assert not upward, upward


@pytest.mark.parametrize("code", [
    "import src.settings as s; cfg = s.load_config(); s.model_config(cfg)",
    "import src.data.splits, src.data.validate, src.data.sources, src.data.manifests",
])
def test_settings_and_data_tools_load_without_tensorflow(code):
    result = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW + code], cwd=REPO,
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_source_file_is_over_the_limit():
    roots = [p for p in ("src", "workspace", "tools", "bench") if (REPO / p).exists()]
    long = {str(p.relative_to(REPO)): n for p in python_files(*roots)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
