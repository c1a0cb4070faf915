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
    <round>/masks/<stem>.png
                           where the queue asks for masks (masks 1): the image's label map, an
                           index PNG of mask class numbers (classes.mask), written all 255
                           (unlabeled) for the annotator to paint
    <round>/predicted_masks/<stem>.png
                           ours, when the predictor segments: the global model's label map
    <round>/classes.csv    the annotator's sheet: image (the key), disaster_class (a class
                           name, where class is 1), done
    <round>/ingested.txt   ours: keys already taken, never read again
    <round>/predictions.json
                           ours, when the oracle has a predictor: per key the global model's
                           detections (boxes in pixels, scores, victim classes) and its disaster
                           class, the pre-annotations a labeling tool starts from

Answered rule: an image is answered when its ``done`` cell in classes.csv is
filled (anything but empty, 0, no, false). Not "the label file is not
empty": an empty YOLO file is a real answer ("no victims"), and a file an
annotation tool is still saving must not be taken. A done answer is checked
with the readers' own functions (``read_yolo_labels``, ``parse_class_table``):
a malformed one is reported by file and line (``HumanOracle.problems`` and
the log) and stays in the queue until fixed; the others are taken.
A done mask is read as every mask is (``read_mask``: the image's size, known
values only) and must label at least one pixel.
A tool that writes answers for the annotator (the labeling page, an import
from Label Studio or CVAT) calls ``save_answer``: the same checks before
anything is written, then the label files and the done mark, each replaced
atomically, the labels first.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from src.active_learning.pool import TASKS, Answer, LabelPool
from src.atomic_files import replaced_atomically, write_bytes_atomically
from src.data.formats import (DataError, ErrorReport, image_size, inside_folder, parse_class_table,
                              read_text_file, read_yolo_labels, relative_key, split_row)
from src.data.formats.masks import IGNORE_INDEX, mask_class_map, mask_palette, read_mask, write_mask
from src.data.records import Record

log = logging.getLogger(__name__)

QUEUE_COLUMNS = ("key", "image", "width", "height", "label_file", "boxes", "class", "masks")
ANSWER_COLUMNS = ("image", "disaster_class", "done")
NOT_DONE = frozenset({"", "0", "no", "n", "false"})
PREDICTIONS_FILE = "predictions.json"
PREDICTED_BOXES = 20  # per image, the highest-scoring detections kept as pre-annotations
PREDICTED_MASKS = "predicted_masks"
# What the queue asks an annotator for: boxes (a YOLO file), a disaster class (the sheet), a
# mask (a PNG label map)
QUEUE_TASKS = ("boxes", "class", "masks")


class Oracle(Protocol):
    name: str

    def request(self, records: Mapping[str, Record], round_num: int) -> None: ...

    def collect(self) -> dict[str, Answer]: ...

    def acknowledge(self, keys: Iterable[str]) -> None: ...


class SimulatedOracle:
    """Answers at once with the labels the pool's Records hold (manifest-masked truth), of
    `tasks` (the site's) only."""

    name = "simulated"

    def __init__(self, held_back: Mapping[str, Record], tasks: Sequence[str] = TASKS):
        self._held_back = dict(held_back)
        self.tasks = tuple(tasks)
        self._answers: dict[str, Answer] = {}

    def request(self, records: Mapping[str, Record], round_num: int) -> None:
        unknown = [k for k in records if k not in self._held_back]
        if unknown:
            raise ValueError(f"simulated oracle: no held-back labels for {unknown[:3]}")
        self._answers.update((k, Answer.of_record(self._held_back[k], self.tasks)) for k in records)

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


def _sheet_with_answer(sheet: Path, key: str, disaster_class: str) -> tuple[bytes, int]:
    """classes.csv with `key`'s row set to (disaster_class, done), its other rows and columns as
    they are, and that row's line number; a sheet with a broken row is refused (it would be lost)."""
    rows, errors = _read_table(sheet, ANSWER_COLUMNS)
    if errors:
        raise DataError(f"{errors[0]}; fix the sheet before saving answers")
    header = [h.strip() for h in split_row(read_text_file(sheet).splitlines()[0], ",", f"{sheet}: line 1")]
    cells = [dict(row) for _, row in rows]
    index = next((i for i, row in enumerate(cells) if row["image"] == key), None)
    if index is None:
        cells.append({"image": key})
        index = len(cells) - 1
    cells[index].update(disaster_class=disaster_class, done="1")
    return _csv_bytes(header, ([row.get(h, "") for h in header] for row in cells)), index + 2  # as rewritten


@dataclass(frozen=True)
class QueuedImage:
    """One image of a written queue as a labeling tool sees it."""

    round_num: int
    key: str
    image: str               # absolute path
    width: int
    height: int
    label_file: Path
    wants_boxes: bool
    wants_class: bool
    disaster_class: str      # the sheet's cell
    status: str              # waiting | done (answered, not taken yet) | taken (ingested by the site)
    wants_mask: bool = False

    @property
    def mask_file(self) -> Path:
        """The answer's label map: masks/<label file's stem>.png of its round."""
        return round_mask_file(self.label_file.parent.parent, self.label_file.name)


def round_mask_file(folder: Path, label_file: str, subfolder: str = "masks") -> Path:
    """A queued image's label map in a round's folder: the answer's (masks/) or the model's
    (PREDICTED_MASKS), named after its label file."""
    return folder / subfolder / f"{Path(label_file).stem}.png"


class HumanOracle:
    """A queue folder an annotator answers at their own pace; see the module docstring."""

    name = "human"

    def __init__(self, queue_dir, victim_classes: Sequence[str], disaster_classes: Sequence[str],
                 tasks: Sequence[str] = ("boxes", "class"), predictor=None, mask_classes: Sequence[str] = ()):
        """predictor: anything with ``predict(records) -> [dict | None]`` as src.evaluation.Predictor
        (boxes in pixels, scores, classes, disaster_probs, and a segmenting model's mask), run on
        the model that chose the images; its guesses go beside the queue (predictions.json,
        predicted_masks/) for labeling tools to start from. mask_classes: classes.mask, needed to
        ask for masks and to read a queue that asks for them."""
        unasked = sorted(set(tasks) - set(QUEUE_TASKS))
        if unasked:
            raise ValueError(f"the human label queue asks for {list(QUEUE_TASKS)} only, not {unasked}")
        if "masks" in tasks and not mask_classes:
            raise ValueError("a label queue that asks for masks needs the mask classes (classes.mask)")
        self.queue_dir = Path(queue_dir)
        self.victim_classes, self.disaster_classes = list(victim_classes), list(disaster_classes)
        self.mask_classes = list(mask_classes)
        self.mask_palette = mask_palette(len(self.mask_classes))
        self._mask_lookup = mask_class_map(self.mask_classes) if self.mask_classes else None
        self.tasks = tuple(tasks)
        self.predictor = predictor
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
            mask = round_mask_file(folder, f"{stem}.txt")
            if "masks" in self.tasks and not mask.exists():
                mask.parent.mkdir(exist_ok=True)
                write_mask(np.full((height, width), IGNORE_INDEX, np.uint8), mask, self.mask_palette)
            rows.append((key, str(Path(record.image_path).resolve()), width, height, f"{stem}.txt",
                         int("boxes" in self.tasks), int("class" in self.tasks), int("masks" in self.tasks)))
        write_bytes_atomically(folder / "classes.csv", _csv_bytes(ANSWER_COLUMNS, ((k, "", "") for k in records)))
        if self.predictor is not None:
            label_files = {key: row[4] for key, row in zip(records, rows)}
            write_bytes_atomically(folder / PREDICTIONS_FILE, self._predictions(records, folder, label_files))
        write_bytes_atomically(folder / "queue.csv", _csv_bytes(QUEUE_COLUMNS, rows))  # last: round complete

    def _predictions(self, records: Mapping[str, Record], folder: Path, label_files: Mapping[str, str]) -> bytes:
        """predictions.json: per key the top PREDICTED_BOXES detections, clipped to the image;
        where the queue asks for masks and the model segments, its label map in predicted_masks/."""
        keys = list(records)
        images = {}
        for key, result in zip(keys, self.predictor.predict([records[k] for k in keys])):
            if result is None:  # unreadable image: the tool shows it without pre-annotations
                continue
            if "masks" in self.tasks and "mask" in result:
                predicted = round_mask_file(folder, label_files[key], PREDICTED_MASKS)
                predicted.parent.mkdir(exist_ok=True)
                with replaced_atomically(predicted) as tmp:
                    write_mask(result["mask"], tmp, self.mask_palette)
            width, height = image_size(records[key].image_path)
            boxes = np.clip(np.asarray(result["boxes"], np.float64).reshape(-1, 4), 0, [width, height, width, height])
            inside = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # a pixel left in the image
            order = [i for i in np.argsort(-np.asarray(result["scores"]), kind="stable") if inside[i]][:PREDICTED_BOXES]
            boxes = boxes[order].reshape(-1, 4)
            probs = np.asarray(result["disaster_probs"], np.float64)
            images[key] = {
                "boxes": [[round(float(v), 1) for v in box] for box in boxes],
                "scores": [round(float(result["scores"][i]), 4) for i in order],
                "victim_classes": [self.victim_classes[int(result["classes"][i])] for i in order],
                "disaster_class": self.disaster_classes[int(probs.argmax())],
                "disaster_probs": {n: round(float(p), 4) for n, p in zip(self.disaster_classes, probs)}}
        return json.dumps({"round": int(folder.name), "images": images}, indent=1).encode("utf-8")

    def predictions(self, round_num: int) -> dict:
        """Round `round_num`'s pre-annotations by key ({} for a queue written without a predictor)."""
        path = self.queue_dir / str(int(round_num)) / PREDICTIONS_FILE
        if not path.exists():
            return {}
        try:
            images = json.loads(read_text_file(path))["images"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a predictions file ({e})") from None
        if not isinstance(images, dict):
            raise DataError(f"{path}: 'images' must map image keys to predictions")
        return images

    def predicted_mask(self, item: "QueuedImage") -> np.ndarray | None:
        """The global model's label map of a queued image (None: it made none)."""
        path = round_mask_file(item.label_file.parent.parent, item.label_file.name, PREDICTED_MASKS)
        return self._read_mask(path, item.width, item.height, item.image) if path.is_file() else None

    def answer_mask(self, item: "QueuedImage") -> np.ndarray:
        """A queued image's label map as it stands (all IGNORE_INDEX until painted)."""
        return self._read_mask(item.mask_file, item.width, item.height, item.image)

    def _read_mask(self, path: Path, width: int, height: int, image: str) -> np.ndarray:
        if self._mask_lookup is None:
            raise DataError(f"{path}: the queue asks for masks, but the labeling tool was given no mask "
                            "classes (classes.mask of the site's settings)")
        return read_mask(path, self._mask_lookup, (width, height), image)

    def queued(self) -> list["QueuedImage"]:
        """Every image of every written round, in queue order, with its answer as it stands."""
        out = []
        for folder in self._round_folders():
            taken = self._ingested(folder)
            sheet = {row["image"]: row for _, row in _read_table(folder / "classes.csv", ANSWER_COLUMNS)[0]}
            for n, row in _read_table(folder / "queue.csv", QUEUE_COLUMNS)[0]:
                cells = sheet.get(row["key"], {})
                done = cells.get("done", "").lower() not in NOT_DONE
                try:
                    width, height = int(row["width"]), int(row["height"])
                except ValueError as e:
                    raise DataError(f"{folder / 'queue.csv'}: line {n}: width/height are not integers ({e})") from None
                out.append(QueuedImage(int(folder.name), row["key"], row["image"], width, height,
                                       folder / "labels" / row["label_file"], row["boxes"] == "1",
                                       row["class"] == "1", cells.get("disaster_class", ""),
                                       "taken" if row["key"] in taken else "done" if done else "waiting",
                                       row["masks"] == "1"))
        return out

    def save_answer(self, round_num: int, key: str, label_text: str, disaster_class: str = "",
                    mask: np.ndarray | None = None) -> Answer:
        """Write `key`'s answer of round `round_num` (YOLO lines; a disaster class name and a
        (height, width) label map where the queue asks for them) and mark it done, after the
        checks collect() makes; a refused answer raises DataError naming the file, line and
        field, and nothing is written."""
        folder = self.queue_dir / str(int(round_num))
        rows = ({row["key"]: row for _, row in _read_table(folder / "queue.csv", QUEUE_COLUMNS)[0]}
                if (folder / "queue.csv").is_file() else {})
        if key not in rows:
            raise DataError(f"{folder / 'queue.csv'}: image {key!r} is not queued in round {round_num}")
        if key in self._ingested(folder):
            raise DataError(f"{folder / 'ingested.txt'}: {key} is taken by the site already; a new answer "
                            "would never be read")
        queued, sheet = rows[key], folder / "classes.csv"
        wants_boxes, wants_class, wants_mask = (queued[task] == "1" for task in ("boxes", "class", "masks"))
        if not wants_boxes and label_text.strip():
            raise DataError(f"{folder / 'queue.csv'}: {key}: this site does not label boxes; no boxes are asked for")
        if wants_mask != (mask is not None):
            raise DataError(f"{folder / 'queue.csv'}: {key}: " + ("the queue asks for a mask and the answer has none"
                            if wants_mask else "this site does not label masks; no mask is asked for"))
        text, line = _sheet_with_answer(sheet, key, disaster_class if wants_class else "")
        label = inside_folder(folder / "labels" / queued["label_file"], folder / "labels", "label file")
        mask_path = round_mask_file(folder, queued["label_file"])
        with ExitStack() as files:
            sheet_tmp = files.enter_context(replaced_atomically(sheet))
            label_tmp = files.enter_context(replaced_atomically(label)) if wants_boxes else None
            mask_tmp = files.enter_context(replaced_atomically(mask_path)) if wants_mask else None
            Path(sheet_tmp).write_bytes(text)
            if label_tmp is not None:
                Path(label_tmp).write_text(label_text, encoding="utf-8")
            try:
                if mask_tmp is not None:
                    mask = np.asarray(mask)
                    if mask.shape != (int(queued["height"]), int(queued["width"])) or mask.dtype != np.uint8:
                        raise DataError(f"{mask_path}: the answer's mask is {mask.dtype} {mask.shape}; the image "
                                        f"is {queued['width']}x{queued['height']}: one uint8 class per pixel")
                    write_mask(mask, mask_tmp, self.mask_palette)
                table = (parse_class_table(sheet_tmp, self.disaster_classes, "image", "disaster_class", ",")
                         if wants_class else None)
                return self._answer(folder, queued, {"disaster_class": disaster_class}, table,
                                    f"{sheet}: line {line}", label=label_tmp, mask=mask_tmp)
            except DataError as err:  # named by the files the answer goes to, not the temporary ones
                message = str(err)
                for tmp, final in ((sheet_tmp, sheet), (label_tmp, label), (mask_tmp, mask_path)):
                    message = message.replace(str(tmp), str(final)) if tmp is not None else message
                raise DataError(message) from None

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

    def _answer(self, folder: Path, queued: dict, sheet_row: dict, table, where: str,
                label: Path | None = None, mask: Path | None = None) -> Answer:
        """One done image's labels, checked as the readers check a data set's (`label`, `mask`:
        the files to read instead of the queued ones, an answer about to be saved)."""
        key, want_boxes, want_class, want_mask = queued["key"], *(queued[t] == "1" for t in ("boxes", "class", "masks"))
        boxes, victims = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
        try:
            width, height = int(queued["width"]), int(queued["height"])
        except ValueError as e:
            raise DataError(f"{folder / 'queue.csv'}: {key}: width/height are not integers ({e})") from e
        if want_boxes:
            label = inside_folder(Path(label or folder / "labels" / queued["label_file"]), folder / "labels",
                                  "label file")
            boxes, victims = read_yolo_labels(label, width, height, len(self.victim_classes))
        mask_path = round_mask_file(folder, queued["label_file"])
        if want_mask:
            if (self._read_mask(Path(mask or mask_path), width, height, queued["image"]) == IGNORE_INDEX).all():
                raise DataError(f"{mask or mask_path}: {key} is marked done but its mask labels no pixel "
                                f"(every value {IGNORE_INDEX}, unlabeled)")
        disaster = -1
        if want_class:
            if not sheet_row["disaster_class"]:
                raise DataError(f"{where}: {key} is marked done but its disaster_class is empty "
                                f"(one of {self.disaster_classes})")
            row_errors = [err for k, err in table.errors if k == key]
            if row_errors or key not in table.classes:
                raise row_errors[0] if row_errors else DataError(f"{where}: no disaster_class for {key}")
            disaster = table.classes[key]
        return Answer(boxes, victims, disaster, want_boxes, want_class,
                      str(mask_path) if want_mask else None, want_mask)


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
