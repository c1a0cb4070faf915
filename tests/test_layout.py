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
    "import src.data.splits, src.data.validate, src.data.sources, src.data.manifests, src.data.synthetic, "
    "src.data.duplicates, src.data.datasets",
])
def test_settings_and_data_tools_load_without_tensorflow(code):
    result = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW + code], cwd=REPO,
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


def run_without_tensorflow(module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCK_TENSORFLOW + f"import runpy\nsys.argv = {[module, *map(str, args)]!r}\n" \
                              f"runpy.run_module({module!r}, run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_every_data_tool_runs_without_tensorflow(tmp_path):
    """Not just imports: each data command line does its whole job with TensorFlow blocked
    (the synthetic generator, validate, the split builder on the built-in data and on sources)."""
    import yaml

    from tests.real_formats import write_c2a_aider_crisis

    spec, _ = write_c2a_aider_crisis(tmp_path / "real", c2a_images=12, aider_images=10, copies=4, crisis_images=10)
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["data"].update(root=str(tmp_path / "synthetic"), test_fraction=0.25, val_fraction=0.25)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    runs = [("src.data.synthetic", "--out", tmp_path / "synthetic", "--num-images", 40, "--workers", 1,
             "--min-size", 64, "--max-size", 64),
            ("src.data.validate", spec),
            ("src.data.validate", tmp_path / "synthetic"),
            ("src.data.splits", "--config", tmp_path / "config.yaml", "--out", tmp_path / "builtin", "--sites", 2,
             "--alpha", 100),
            ("src.data.splits", "--sources", spec, "--out", tmp_path / "split", "--sites", 2, "--strategy", "iid",
             "--val-fraction", 0.2)]
    for module, *args in runs:
        result = run_without_tensorflow(module, *args, cwd=tmp_path)
        assert result.returncode == 0, f"{module}: {result.stderr[-2000:]}"


def test_no_source_file_is_over_the_limit():
    roots = [p for p in ("src", "workspace", "tools", "bench") if (REPO / p).exists()]
    long = {str(p.relative_to(REPO)): n for p in python_files(*roots)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
