"""The data tools as a user meets them: `python -m src.data.validate` and `python -m src.data.splits`.

What they print (warnings included, each problem once), the one `error:` line and exit code 2 of
every refusal, and the data guide's worked example (docs/data.md), whose output must be what the
commands print.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.data.splits import main as split_main
from src.data.validate import main as validate_main
from tests.real_formats import (C2A_AIDER_CRISIS_SPEC, POSE_MAP, write_aider_folders, write_c2a_aider_crisis,
                                write_c2a_coco, write_sources_spec)

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "data.md"


def run(module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """A data tool as its own process, so its logging reaches stderr as a user sees it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The worked example's files under <tmp>/data/real/, as the data guide lays them out."""
    base = tmp_path_factory.mktemp("example")
    write_c2a_aider_crisis(base / "data" / "real")
    return base


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A clean two-source spec (C2A-style COCO + class folders, and a table)."""
    return write_sources_spec(tmp_path_factory.mktemp("small"), coco_images=20, tsv_images=10)


# --------------------------------------------------------------------------- the worked example (docs/data.md)


def doc_block(marker: str) -> str:
    """The fenced block after `<!-- worked example: MARKER -->` in the data guide."""
    text = DOCS.read_text()
    found = re.search(rf"<!-- worked example: {re.escape(marker)} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"{DOCS}: no block marked {marker!r}"
    return found.group(1)


def test_the_guide_shows_the_sources_yaml_the_example_uses():
    assert doc_block("sources.yaml") == C2A_AIDER_CRISIS_SPEC


@pytest.mark.parametrize("marker", ["validate", "split"])
def test_the_guide_shows_what_the_example_commands_print(example, marker):
    command, *shown = doc_block(marker).splitlines()
    assert command.startswith("$ python -m ")
    module, *args = command.removeprefix("$ python -m ").split()
    done = run(module, *args, cwd=example)
    assert done.returncode == 0, done.stderr
    assert (done.stderr + done.stdout).splitlines() == shown


def test_the_c2a_layout_needs_its_image_folder_named(example, tmp_path):
    spec = example / "data" / "real" / "without_images.yaml"
    spec.write_text(C2A_AIDER_CRISIS_SPEC.replace(", images: images}", "}"))
    done = run("src.data.validate", spec, cwd=example)
    assert done.returncode == 1
    assert ("c2a/c2a_000.jpg not found; it is at images/c2a_000.jpg: the json's file names are relative "
            "to that folder, say so with 'images: images' in this source's boxes") in done.stdout


# --------------------------------------------------------------------------- 5. warnings, and each problem once


def test_validate_shows_warnings(tmp_path):
    """Boxes in images/ and classes in class folders of one source: no image has both labels,
    which is legal but usually a wrong path, so validate says it."""
    write_c2a_coco(tmp_path / "mixed", 6, seed=7, class_folders=False)
    write_aider_folders(tmp_path / "mixed", 4, seed=8)
    spec = tmp_path / "sources.yaml"
    spec.write_text(yaml.safe_dump({"class_map": {"victim": dict(POSE_MAP)}, "sources": [
        {"name": "mixed", "root": "mixed", "boxes": {"format": "coco", "file": "annotations.json"},
         "classes": {"format": "folders", "drop_unmapped": True}}]}))
    done = run("src.data.validate", spec, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "  warning: " in done.stdout and "(mixed): no image has both boxes and a class" in done.stdout


def bad_annotation_spec(tmp_path) -> tuple[Path, str]:
    spec = write_sources_spec(tmp_path, coco_images=20, tsv_images=10)
    data = json.loads((tmp_path / "c2a" / "annotations.json").read_text())
    data["annotations"][0]["bbox"] = [1000, 1000, 5, 5]
    (tmp_path / "c2a" / "annotations.json").write_text(json.dumps(data))
    return spec, "bbox [1000, 1000, 5, 5] lies outside the"


@pytest.mark.parametrize("tool", ["validate", "split builder"])
def test_skip_mode_prints_the_problem_summary_once(tmp_path, tool):
    spec, problem = bad_annotation_spec(tmp_path)
    if tool == "validate":
        done = run("src.data.validate", spec, "--on-error", "skip", cwd=tmp_path)
        assert done.returncode == 1
    else:
        done = run("src.data.splits", "--sources", spec, "--name", "s", "--sites", "2", "--strategy", "iid",
                   "--on-error", "skip", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert output.count(problem) == 1 and output.count("1 image(s) skipped, 1 problem(s)") == 1, output


# --------------------------------------------------------------------------- 4. refusals: one `error:` line, exit 2


def one_error_line(capsys, *fragments: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


SPLIT_REFUSALS = {
    "dirichlet cannot give every site data": (["--sites", "12", "--strategy", "dirichlet:0.001"],
                                              "class shares left some of the 12 sites without images"),
    "unknown strategy": (["--strategy", "random"], "unknown strategy 'random'"),
    "0 sites": (["--sites", "0"], "--sites must be at least 1, got 0"),
    "negative sites": (["--sites", "-3", "--strategy", "iid"], "--sites must be at least 1"),
    "test fraction over 1": (["--test-fraction", "1.5"], "--test-fraction 1.5"),
    "fractions leaving no training data": (["--test-fraction", "0.6", "--val-fraction", "0.4"], "leave some"),
    "seed fraction 0": (["--seed-fraction", "0"], "--seed-fraction must be in (0, 1]"),
    "by-source with more sites than sources": (["--strategy", "by-source", "--sites", "5"],
                                               "cannot make 5 sites"),
    "more sites than images": (["--sites", "200", "--strategy", "iid"], "without labeled training data"),
    "missing config": (["--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_REFUSALS))
def test_split_builder_refuses_impossible_arguments_in_one_line(small, tmp_path, capsys, case):
    args, fragment = SPLIT_REFUSALS[case]
    out = tmp_path / "split"
    assert split_main(["--sources", str(small), "--out", str(out), *args]) == 2
    one_error_line(capsys, fragment)
    assert not out.exists()


def test_split_builder_refuses_missing_files_and_a_data_folder_as_output(small, tmp_path, capsys):
    assert split_main(["--sources", str(tmp_path / "none.yaml"), "--name", "x"]) == 2
    one_error_line(capsys, "none.yaml: file not found")
    assert split_main(["--sources", str(small), "--out", str(small.parent)]) == 2
    one_error_line(capsys, "which no split folder holds; not replaced")
    assert (small.parent / "c2a" / "annotations.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--sites", "0"], "need --sites >= 1"),
    (["--alpha", "0"], "--alpha > 0"),
    (["--labels", "both,everything"], "--labels must be from ['all', 'both', 'boxes', 'class', 'masks']"),
    (["--seed-fraction", "1.5"], "--seed-fraction in (0, 1]"),
    ([], "the built-in data set is not there (no images/ folder)"),
])
def test_split_builder_on_the_built_in_data_refuses_in_one_line(tmp_path, capsys, args, fragment):
    config = tmp_path / "config.yaml"
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg["data"]["root"] = str(tmp_path / "no_data_here")
    config.write_text(yaml.safe_dump(cfg))
    assert split_main(["--config", str(config), "--out", str(tmp_path / "split"), *args]) == 2
    one_error_line(capsys, fragment)


def test_split_builder_dirichlet_refusal_from_the_command_line_has_no_traceback(small, tmp_path):
    done = run("src.data.splits", "--sources", small, "--name", "x", "--sites", "12", "--strategy",
               "dirichlet:0.001", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: train split (") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["missing spec", "folder without images", "not yaml", "no sources",
                                  "unknown field", "missing config", "a bad file under raise"])
def test_validate_refuses_in_one_line(small, tmp_path, capsys, case):
    spec = tmp_path / "spec.yaml"
    args = [str(spec)]
    if case == "folder without images":
        args = [str(tmp_path)]
    elif case == "not yaml":
        spec.write_text("sources: [unclosed\n")
    elif case == "no sources":
        spec.write_text("sources: []\n")
    elif case == "unknown field":
        spec = small.parent / "unknown_field.yaml"
        spec.write_text(small.read_text().replace("root: c2a", "root: c2a\n  rooot: c2a"))
        args = [str(spec)]
    elif case == "missing config":
        args = [str(small), "--config", str(tmp_path / "none.yaml")]
    elif case == "a bad file under raise":
        spec, _ = bad_annotation_spec(tmp_path / "bad")
        args = [str(spec), "--on-error", "raise"]
    assert validate_main(args) == 2
    one_error_line(capsys)
