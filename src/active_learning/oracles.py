"""Who labels the images active learning picks: a simulation, or a person.

An oracle never blocks the federation: ``request`` hands images over and
returns, ``collect`` returns whatever has been answered since (possibly
nothing) and ``acknowledge`` marks answers as taken. Acknowledging is a
separate step so that a caller saves the labels first (``ingest_answers``):
a crash in between delivers an answer twice, which ``LabelPool.add_answers``
ignores, instead of losing it.

``SimulatedOracle`` (experiments) reveals the held-back labels of the pool's
own Records at request time. ``HumanOracle`` writes a queue that an
annotator works through at their own pace, one folder per label step under
the queue folder the caller names (e.g. in the site's workspace)::

    <round>/queue.csv      ours, for reading: key, image (absolute path), width, height,
                           label_file, boxes (1: draw the victims' boxes),
                           class (1: name the disaster class)
    <round>/labels/<label_file>
                           an empty YOLO stub per image (the image's stem), to be filled with
                           one `class cx cy w h` line per victim, normalised to [0, 1], as the
                           readers expect; left empty it means "no victims"
    <round>/labels/classes.txt
                           the victim class names (what YOLO annotation tools read)
    <round>/classes.csv    the annotator's sheet: image (the key), disaster_class (a class
                           name, where class is 1), done
    <round>/ingested.txt   ours: keys already taken, never read again

Answered rule: an image is answered when its ``done`` cell in classes.csv is
filled (anything but empty, 0, no, false). Not "the label file is not
empty": an empty YOLO file is a real answer ("no victims"), and a file an
annotation tool is still saving must not be taken. A done answer is checked
with the readers' own functions (``read_yolo_labels``, ``parse_class_table``):
a malformed one is reported by file and line (``HumanOracle.problems`` and
the log) and stays in the queue until fixed; the others are taken.
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from src.active_learning.pool import TASKS, Answer, LabelPool
from src.atomic_files import write_bytes_atomically
from src.data.formats import (DataError, ErrorReport, image_size, inside_folder, parse_class_table,
                              read_text_file, read_yolo_labels, relative_key, split_row)
from src.data.records import Record

log = logging.getLogger(__name__)

QUEUE_COLUMNS = ("key", "image", "width", "height", "label_file", "boxes", "class")
ANSWER_COLUMNS = ("image", "disaster_class", "done")
NOT_DONE = frozenset({"", "0", "no", "n", "false"})


class Oracle(Protocol):
    name: str

    def request(self, records: Mapping[str, Record], round_num: int) -> None: ...

    def collect(self) -> dict[str, Answer]: ...

    def acknowledge(self, keys: Iterable[str]) -> None: ...


class SimulatedOracle:
    """Answers at once with the labels the pool's Records hold (manifest-masked truth)."""

    name = "simulated"

    def __init__(self, held_back: Mapping[str, Record]):
        self._held_back = dict(held_back)
        self._answers: dict[str, Answer] = {}

    def request(self, records: Mapping[str, Record], round_num: int) -> None:
        unknown = [k for k in records if k not in self._held_back]
        if unknown:
            raise ValueError(f"simulated oracle: no held-back labels for {unknown[:3]}")
        self._answers.update((k, Answer.of_record(self._held_back[k])) for k in records)

    def collect(self) -> dict[str, Answer]:
        return dict(self._answers)

    def acknowledge(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._answers.pop(key, None)


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def _read_table(path: Path, columns: Sequence[str]) -> tuple[list[tuple[int, dict]], list[DataError]]:
    """(line number, {column: cell}) per row of a CSV with `columns`, and the rows' errors.
    An unreadable file or a missing column raises: no row can be trusted then."""
    lines = read_text_file(path).splitlines()
    header = [h.strip() for h in split_row(lines[0], ",", f"{path}: line 1")] if lines else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {missing} (header is {header})")
    rows, errors = [], []
    for n, line in enumerate(lines[1:], start=2):
        try:
            row = split_row(line, ",", f"{path}: line {n}")
            if any(cell.strip() for cell in row) and len(row) != len(header):
                raise DataError(f"{path}: line {n}: expected {len(header)} fields, got {len(row)}")
        except DataError as err:
            errors.append(err)
            continue
        if any(cell.strip() for cell in row):
            rows.append((n, dict(zip(header, (cell.strip() for cell in row)))))
    return rows, errors


class HumanOracle:
    """A queue folder an annotator answers at their own pace; see the module docstring."""

    name = "human"

    def __init__(self, queue_dir, victim_classes: Sequence[str], disaster_classes: Sequence[str],
                 tasks: Sequence[str] = TASKS):
        self.queue_dir = Path(queue_dir)
        self.victim_classes, self.disaster_classes = list(victim_classes), list(disaster_classes)
        self.tasks = tuple(tasks)
        self.problems = ErrorReport()  # of the last collect()

    def request(self, records: Mapping[str, Record], round_num: int) -> None:
        """Write round `round_num`'s queue; asking again for images it lists (a restart: those
        of them not answered yet) is a no-op."""
        folder = self.queue_dir / str(int(round_num))
        if (folder / "queue.csv").exists():
            listed = {row["key"] for _, row in _read_table(folder / "queue.csv", QUEUE_COLUMNS)[0]}
            if not set(records) <= listed:
                raise ValueError(f"{folder / 'queue.csv'}: round {round_num} already queued other images")
            return
        labels = folder / "labels"
        labels.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(labels / "classes.txt", "".join(f"{n}\n" for n in self.victim_classes).encode())
        rows, used = [], {"classes"}  # labels/classes.txt is the class list
        for key, record in records.items():
            width, height = image_size(record.image_path)
            stem = Path(key).stem if Path(key).stem not in used else key.replace("/", "__").rsplit(".", 1)[0]
            used.add(stem)
            (labels / f"{stem}.txt").touch()  # an annotator's file is never overwritten
            rows.append((key, str(Path(record.image_path).resolve()), width, height, f"{stem}.txt",
                         int("boxes" in self.tasks), int("class" in self.tasks)))
        write_bytes_atomically(folder / "classes.csv", _csv_bytes(ANSWER_COLUMNS, ((k, "", "") for k in records)))
        write_bytes_atomically(folder / "queue.csv", _csv_bytes(QUEUE_COLUMNS, rows))  # last: round complete

    def collect(self) -> dict[str, Answer]:
        """Answers marked done since they were last acknowledged; never waits."""
        self.problems = ErrorReport()
        answers: dict[str, Answer] = {}
        for folder in self._round_folders():
            try:
                answers.update(self._collect_round(folder))
            except DataError as err:  # a whole sheet unreadable: this round waits for a fix
                self._report(err)
        return answers

    def acknowledge(self, keys: Iterable[str]) -> None:
        """Mark answers as taken (in each round's ingested.txt), so they are not delivered again."""
        keys = set(keys)
        for folder in self._round_folders():
            done = self._ingested(folder)
            listed = {row["key"] for _, row in _read_table(folder / "queue.csv", QUEUE_COLUMNS)[0]}
            new = (listed & keys) - done
            if new:
                text = "".join(f"{k}\n" for k in sorted(done | new))
                write_bytes_atomically(folder / "ingested.txt", text.encode("utf-8"))

    def _round_folders(self) -> list[Path]:
        if not self.queue_dir.is_dir():
            return []
        rounds = [p for p in self.queue_dir.iterdir() if p.name.isdigit() and (p / "queue.csv").is_file()]
        return sorted(rounds, key=lambda p: int(p.name))

    @staticmethod
    def _ingested(folder: Path) -> set[str]:
        path = folder / "ingested.txt"
        return set(read_text_file(path).split()) if path.exists() else set()

    def _report(self, err: DataError) -> None:
        self.problems.add(err, skipped_image=True)
        log.warning("label queue: %s; not taken, left in the queue", err)

    def _collect_round(self, folder: Path) -> dict[str, Answer]:
        queue_rows, errors = _read_table(folder / "queue.csv", QUEUE_COLUMNS)
        taken = self._ingested(folder)
        waiting = {row["key"]: row for _, row in queue_rows if row["key"] not in taken}
        if not waiting:
            return {}
        sheet = folder / "classes.csv"
        sheet_rows, sheet_errors = _read_table(sheet, ANSWER_COLUMNS)
        for err in errors + sheet_errors:
            self._report(err)
        wants_class = any(row["class"] == "1" for row in waiting.values())
        table = parse_class_table(sheet, self.disaster_classes, "image", "disaster_class", ",") \
            if wants_class else None
        answers = {}
        for n, row in sheet_rows:
            where = f"{sheet}: line {n}"
            try:
                key = relative_key(row["image"], where)
                if row["done"].lower() in NOT_DONE or key in taken:
                    continue
                if key not in waiting:
                    raise DataError(f"{where}: image {key!r} is not in this round's queue.csv")
                answers[key] = self._answer(folder, waiting[key], row, table, where)
            except DataError as err:
                self._report(err)
        return answers

    def _answer(self, folder: Path, queued: dict, sheet_row: dict, table, where: str) -> Answer:
        """One done image's labels, checked as the readers check a data set's."""
        key, want_boxes, want_class = queued["key"], queued["boxes"] == "1", queued["class"] == "1"
        boxes, victims = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
        if want_boxes:
            try:
                width, height = int(queued["width"]), int(queued["height"])
            except ValueError as e:
                raise DataError(f"{folder / 'queue.csv'}: {key}: width/height are not integers ({e})") from e
            label = inside_folder(folder / "labels" / queued["label_file"], folder / "labels", "label file")
            boxes, victims = read_yolo_labels(label, width, height, len(self.victim_classes))
        disaster = -1
        if want_class:
            if not sheet_row["disaster_class"]:
                raise DataError(f"{where}: {key} is marked done but its disaster_class is empty "
                                f"(one of {self.disaster_classes})")
            row_errors = [err for k, err in table.errors if k == key]
            if row_errors or key not in table.classes:
                raise row_errors[0] if row_errors else DataError(f"{where}: no disaster_class for {key}")
            disaster = table.classes[key]
        return Answer(boxes, victims, disaster, want_boxes, want_class)


def request_labels(pool: LabelPool, oracle: Oracle, keys: Iterable[str], round_num: int, strategy: str) -> None:
    """Send `keys` to `oracle`, saving the request in the pool's state first: after a crash
    in between they are still pending, and ``oracle.request(pool.pending_records(), ...)``
    asks again."""
    keys = list(keys)
    pool.mark_requested(keys, round_num, strategy, oracle.name)
    pending = pool.pending_records()
    oracle.request({k: pending[k] for k in keys}, round_num)


def ingest_answers(pool: LabelPool, oracle: Oracle, round_num: int) -> list[str]:
    """Take whatever the oracle has answered into the pool (saved), then acknowledge it;
    returns the newly labeled keys."""
    answers = oracle.collect()
    if not answers:
        return []
    new = pool.add_answers(answers, round_num)
    oracle.acknowledge(answers)
    return new
