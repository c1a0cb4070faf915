"""Every command line of the model side (evaluate, train_central, pretrain_backbone, export,
predict, export_report, the Darknet converter), given input it cannot use, ends with one
`error:` line that names the problem and exit code 2: never a traceback.

Each case runs the real command: its `main(argv)` in this process (stderr captured), and a
few as `python -m ...` in a fresh one, so the module's own exit path is checked too.
"""
import importlib
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from src.deploy.postprocess import ModelMetadata
from src.settings import load_config, model_config, parse_assignments
from tests.conftest import TINY_ANCHORS

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.input_size=64", "model.width=0.125", "model.depth=[1, 1, 1, 1, 1]",
        f"model.anchors={TINY_ANCHORS}", "model.cls_head_blocks=1"]
TINY_SET = [a for item in TINY for a in ("--set", item)]


def assert_one_error_line(code, stderr: str, *fragments, argparse_error=False):
    """Exit code 2, no traceback, and the last line of stderr is the only `error:` line."""
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    marker = ": error: " if argparse_error else "error: "
    errors = [line for line in lines if (marker in line if argparse_error else line.startswith(marker))]
    assert errors == [lines[-1]], lines[-5:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model (as a .keras file, and as an export folder the keras runtime reads), and
    broken files of every kind the commands take."""
    import keras

    from src.model import build_model

    root = tmp_path_factory.mktemp("cli_errors")
    keras.utils.set_random_seed(0)
    settings = load_config(overrides=parse_assignments(TINY))
    model = build_model(model_config(settings))
    model.save(root / "tiny.keras")
    export = root / "export"
    export.mkdir()
    model.save(export / "model.keras")
    ModelMetadata(64, TINY_ANCHORS, ["person"], settings["classes"]["disaster"]).save(export)
    (root / "not_a_zip.keras").write_bytes(b"\x00garbage, not a zip archive" * 10)
    with zipfile.ZipFile(root / "damaged.keras", "w") as archive:
        archive.writestr("config.json", "{ this is not json")
        archive.writestr("metadata.json", "{}")
    (root / "damaged.pbuf").write_bytes(b"\xff\x00\x13 not a protobuf message" * 5)
    broken = root / "broken_export"
    broken.mkdir()
    (broken / "model_fp32.tflite").write_bytes(b"not a flatbuffer" * 8)
    ModelMetadata(64, TINY_ANCHORS, ["person"], settings["classes"]["disaster"]).save(broken)
    bad_meta = root / "bad_meta"
    bad_meta.mkdir()
    model.save(bad_meta / "model.keras")
    (bad_meta / "deploy.json").write_text("{ not json")
    (root / "photo.jpg").write_text("a text file with an image's name")
    (root / "a_file").write_text("")
    return root


def command(module: str):
    """The command line `python -m module`, called as main(argv) in this process."""
    def main(*argv):
        return importlib.import_module(module).main(list(argv))
    return main


evaluate = command("src.cli.evaluate")
train_central = command("src.cli.train_central")
pretrain_backbone = command("src.cli.pretrain_backbone")
export = command("src.deploy.export")
predict = command("src.deploy.predict")
export_report = command("src.deploy.export_report")


CASES = {
    # evaluate
    "evaluate: a file that is not a .keras archive": (
        evaluate, lambda f: ["--model", f / "not_a_zip.keras", "--out", f / "e1"],
        ["not_a_zip.keras: not a readable model file"]),
    "evaluate: a damaged .keras archive": (
        evaluate, lambda f: ["--model", f / "damaged.keras", "--out", f / "e2"],
        ["damaged.keras: not a readable model file"]),
    "evaluate: a damaged OpenFL state": (
        evaluate, lambda f: ["--model", f / "damaged.pbuf", "--out", f / "e3", *TINY_SET],
        ["damaged.pbuf: not a readable OpenFL model state"]),
    "evaluate: a model other settings describe": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--out", f / "e4"],
        ["tiny.keras does not fit the settings", "input size 64 (settings: 256)"]),
    "evaluate: a split folder that does not exist": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--split", f / "no_split", "--out", f / "e5", *TINY_SET],
        ["no_split"]),
    "evaluate: a sources.yaml that does not exist": (
        evaluate,
        lambda f: ["--model", f / "tiny.keras", "--sources", f / "none.yaml", "--out", f / "e6", *TINY_SET],
        ["none.yaml"]),
    "evaluate: --set without =": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--set", "model.width"],
        ["setting 'model.width' is not key=value"]),
    "evaluate: --set with a value that is not YAML": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--set", "model.anchors=[[1, 2]"],
        ["--set 'model.anchors=[[1, 2]': the value is not YAML"]),
    "evaluate: --set with an unknown model key": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--set", "model.widht=0.5"],
        ["unknown settings ['model.widht']"]),
    "evaluate: a settings file that does not exist": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--config", f / "none.yaml"],
        ["config file not found", "none.yaml"]),
    "evaluate: --out is a file": (
        evaluate, lambda f: ["--model", f / "tiny.keras", "--out", f / "a_file" / "eval", *TINY_SET],
        ["a_file"]),
    # train_central, pretrain_backbone
    "train_central: a split folder that does not exist": (
        train_central, lambda f: ["--split", f / "no_split", "--out", f / "t1", *TINY_SET],
        ["no_split: no such split folder"]),
    "train_central: an impossible model setting": (
        train_central, lambda f: ["--set", "model.input_size=100", "--out", f / "t2"],
        ["input_size must be a multiple of 32, got 100"]),
    "pretrain_backbone: a setting of the wrong type": (
        pretrain_backbone, lambda f: ["--set", "model.width=wide", "--out", f / "p1"],
        ["model.width must be a positive number, got 'wide'"]),
    # export
    "export: a file that is not a .keras archive": (
        export, lambda f: ["--model", f / "not_a_zip.keras", "--out", f / "x1"],
        ["not_a_zip.keras: not a readable model file"]),
    "export: a model other settings describe": (
        export, lambda f: ["--model", f / "tiny.keras", "--out", f / "x2", "--formats", "keras"],
        ["tiny.keras does not fit the settings"]),
    "export: a model that does not exist": (
        export, lambda f: ["--model", f / "none.keras", "--out", f / "x3"],
        ["none.keras: no such model file"]),
    # predict
    "predict: a damaged .tflite file": (
        predict,
        lambda f: [f / "photo.jpg", "--model", f / "broken_export" / "model_fp32.tflite", "--out", f / "r1"],
        ["model_fp32.tflite: not a readable tflite model"]),
    "predict: a deploy.json that is not JSON": (
        predict, lambda f: [f / "photo.jpg", "--model", f / "bad_meta" / "model.keras", "--out", f / "r2"],
        ["deploy.json: not a JSON file"]),
    "predict: an image file that is not an image": (
        predict, lambda f: [f / "photo.jpg", "--model", f / "export" / "model.keras", "--out", f / "r3"],
        ["photo.jpg: not a readable image"]),
    "predict: a model that does not exist": (
        predict, lambda f: [f / "photo.jpg", "--model", f / "none.tflite", "--out", f / "r4"],
        ["none.tflite: no such exported model"]),
    # export_report
    "export_report: a model that does not exist": (
        export_report, lambda f: ["--model", f / "none.keras", "--out", f / "rep"],
        ["none.keras: no model; train one with `make train-central` first"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_with_one_error_line_and_exit_code_2(case, files, capsys):
    command, argv, fragments = CASES[case]
    code = command(*map(str, argv(files)))
    assert_one_error_line(code, capsys.readouterr().err, *fragments)


@pytest.mark.parametrize("command, argv, fragment", [
    (train_central, ["--epochs", "-1"], "argument --epochs: -1 is below 0"),
    (export, ["--model", "m.keras", "--formats", "onnx"], "argument --formats: invalid choice: 'onnx'"),
    (export, ["--model", "m.keras", "--calibration-images", "0"], "argument --calibration-images: 0 is below 1"),
    (predict, ["x.jpg", "--model", "m.tflite", "--batch-size", "0"], "argument --batch-size: 0 is below 1"),
    (predict, ["x.jpg", "--model", "m.tflite", "--score", "1.5"], "argument --score: 1.5 is outside [0, 1]"),
    (export_report, ["--rounds", "0"], "argument --rounds: 0 is below 1"),
])
def test_impossible_arguments_are_refused_by_the_parser(command, argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        command(*argv)
    assert_one_error_line(exit_.value.code, capsys.readouterr().err, fragment, argparse_error=True)


def test_darknet_converter_refuses_a_bad_class_map(tmp_path, capsys):
    from tools.darknet import expected_file_bytes, main

    weights = tmp_path / "yolov3.weights"
    with open(weights, "wb") as f:  # the right size, so the class map is what fails
        f.write(struct.pack("<3iq", 0, 2, 0, 0))
        f.truncate(expected_file_bytes())
    code = main(["--weights", str(weights), "--out", str(tmp_path / "m.keras"), "--class-map", "person"])
    assert_one_error_line(code, capsys.readouterr().err, "--class-map expects coco_class=our_class")


@pytest.mark.parametrize("module, argv, fragment", [
    ("src.cli.evaluate", ["--model", "{f}/not_a_zip.keras", "--out", "{f}/s1"], "not a readable model file"),
    ("src.cli.train_central", ["--split", "{f}/no_split", "--out", "{f}/s3"], "no_split: no such split folder"),
    ("src.deploy.export", ["--model", "{f}/tiny.keras", "--set", "model.anchors=[1, 2"], "the value is not YAML"),
    ("src.deploy.predict", ["{f}/missing.jpg", "--model", "{f}/export/model.keras", "--out", "{f}/s2"],
     "missing.jpg: no such file or folder"),
    ("src.deploy.export_report", ["--model", "{f}/none.keras"], "no model; train one"),
    ("tools.darknet", ["--weights", "{f}/none.weights", "--out", "{f}/m.keras"], "none.weights"),
])
def test_the_module_exits_with_code_2_and_one_error_line(module, argv, fragment, files):
    proc = subprocess.run([sys.executable, "-m", module, *(a.format(f=files) for a in argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    line = assert_one_error_line(proc.returncode, proc.stderr, fragment)
    assert "File not found" not in line
