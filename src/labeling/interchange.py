"""A site's queue in the formats of the labeling tools teams already run, and their exports as answers.

Label Studio: the queue's waiting images become import tasks (``data.image``,
``data.key``, ``data.round``) with the global model's boxes and disaster class
as ``predictions``, which Label Studio shows as pre-annotations; its JSON export
(the same tasks with ``annotations``) comes back as answers, the latest
non-cancelled annotation of each task. The labeling config the tasks fit is
``label_studio_config``.
CVAT: a COCO instances json of the waiting images with the model's boxes (CVAT
imports it as annotations of a task holding the same file names); CVAT's COCO
export comes back through the COCO reader every data set goes through. COCO
carries boxes only, so where the queue asks for a disaster class it is taken
from the queue's sheet (classes.csv, or the labeling page), never from the model.
Every answer is saved by ``HumanOracle.save_answer``: checked like any label,
refused with the reason and nothing written when it is wrong.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from src.active_learning.oracles import HumanOracle, QueuedImage
from src.atomic_files import write_bytes_atomically
from src.data.formats import DataError, read_coco, read_text_file

BOXES, CLASS, IMAGE = "victims", "disaster", "image"  # the labeling config's control names
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL for files under its document root


@dataclass
class ImportReport:
    saved: list[str] = field(default_factory=list)     # keys
    refused: list[str] = field(default_factory=list)   # one message per refused answer
    unanswered: int = 0                                # tasks without an annotation


def yolo_lines(boxes, item: QueuedImage, victim_classes, where: str) -> str:
    """Boxes ([x0, y0, x1, y1, class name] in image pixels) as YOLO lines, unclipped: a box that
    leaves the image is refused by the label checks, not silently cut."""
    lines = []
    for n, box in enumerate(boxes, start=1):
        if not isinstance(box, (list, tuple)) or len(box) != 5:
            raise DataError(f"{where}: box {n}: expected [x0, y0, x1, y1, class], got {box!r}")
        *coords, name = box
        if name not in victim_classes:
            raise DataError(f"{where}: box {n}: unknown victim class {name!r} (known: {list(victim_classes)})")
        try:
            x0, y0, x1, y1 = (float(v) for v in coords)
        except (TypeError, ValueError):
            raise DataError(f"{where}: box {n}: coordinates must be numbers, got {coords!r}") from None
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        w, h = item.width, item.height
        lines.append(f"{victim_classes.index(name)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                     f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n")
    return "".join(lines)


def waiting(oracle: HumanOracle) -> list[QueuedImage]:
    return [item for item in oracle.queued() if item.status == "waiting"]


def model_boxes(oracle: HumanOracle, item: QueuedImage, min_score: float) -> tuple[list, str]:
    """The global model's boxes scoring at least min_score ([x0, y0, x1, y1, class, score]) and class."""
    predicted = oracle.predictions(item.round_num).get(item.key, {})
    boxes = [[*box, name, score] for box, name, score in zip(predicted.get("boxes", []),
             predicted.get("victim_classes", []), predicted.get("scores", [])) if score >= min_score]
    return boxes, predicted.get("disaster_class", "")


# ---- Label Studio ---------------------------------------------------------------------------
def label_studio_config(victim_classes, disaster_classes) -> str:
    """The labeling interface the tasks fit (Project settings > Labeling Interface > Code)."""
    labels = "".join(f"\n    <Label value={quoteattr(n)}/>" for n in victim_classes)
    choices = "".join(f"\n    <Choice value={quoteattr(n)}/>" for n in disaster_classes)
    return (f'<View>\n  <Image name="{IMAGE}" value="$image"/>\n'
            f'  <RectangleLabels name="{BOXES}" toName="{IMAGE}">{labels}\n  </RectangleLabels>\n'
            f'  <Choices name="{CLASS}" toName="{IMAGE}" choice="single" showInline="true">{choices}\n'
            f'  </Choices>\n</View>\n')


def local_files_url(image: str, document_root: Path) -> str:
    """Label Studio's URL of an image under its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."""
    path, root = Path(image).resolve(), document_root.resolve()
    if not path.is_relative_to(root):
        raise DataError(f"{image}: not under the document root {root} (--document-root)")
    return LOCAL_FILES + quote(path.relative_to(root).as_posix())


def export_label_studio(oracle: HumanOracle, document_root: Path, min_score: float) -> list[dict]:
    """Import tasks of the waiting images, the model's boxes and class as predictions."""
    tasks = []
    for item in waiting(oracle):
        boxes, disaster = model_boxes(oracle, item, min_score)
        result = []
        if item.wants_boxes:
            result += [{"id": f"box{n}", "from_name": BOXES, "to_name": IMAGE, "type": "rectanglelabels",
                        "original_width": item.width, "original_height": item.height, "image_rotation": 0,
                        "score": score, "value": {
                            "x": 100 * x0 / item.width, "y": 100 * y0 / item.height, "rotation": 0,
                            "width": 100 * (x1 - x0) / item.width, "height": 100 * (y1 - y0) / item.height,
                            "rectanglelabels": [name]}}
                       for n, (x0, y0, x1, y1, name, score) in enumerate(boxes)]
        if item.wants_class and disaster:
            result.append({"id": "class", "from_name": CLASS, "to_name": IMAGE, "type": "choices",
                           "value": {"choices": [disaster]}})
        tasks.append({"data": {IMAGE: local_files_url(item.image, document_root), "key": item.key,
                               "round": item.round_num},
                      "predictions": [{"model_version": f"global model, round {item.round_num}", "result": result}]})
    return tasks


def _label_studio_answer(task: dict, item: QueuedImage, victim_classes, where: str) -> tuple[str, str] | None:
    """(YOLO text, disaster class) of a task's latest non-cancelled annotation; None: not annotated."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    latest = max(enumerate(annotations), key=lambda ia: (str(ia[1].get("updated_at", "")), ia[0]))[1]
    boxes, disaster = [], ""
    for n, region in enumerate(latest.get("result") or []):
        value = region.get("value", {}) if isinstance(region, dict) else {}
        if region.get("type") == "rectanglelabels" and region.get("from_name") == BOXES:
            if value.get("rotation", 0):
                raise DataError(f"{where}: result[{n}]: a rotated box; victims' boxes are upright")
            try:
                x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where}: result[{n}]: needs numeric x, y, width, height") from None
            names = value.get("rectanglelabels") or [None]
            boxes.append([x * item.width / 100, y * item.height / 100, (x + w) * item.width / 100,
                          (y + h) * item.height / 100, names[0]])
        elif region.get("type") == "choices" and region.get("from_name") == CLASS:
            disaster = (value.get("choices") or [""])[0]
    return yolo_lines(boxes, item, victim_classes, where), disaster


def import_label_studio(oracle: HumanOracle, path: Path) -> ImportReport:
    """Label Studio's JSON export of the exported tasks, saved as answers where annotated."""
    try:
        tasks = json.loads(read_text_file(path))
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: expected Label Studio's JSON export (a list of tasks)")
    queued = {(item.round_num, item.key): item for item in oracle.queued()}
    report = ImportReport()
    for i, task in enumerate(tasks):
        where = f"{path}: task {i}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        try:
            data = task.get("data", {}) if isinstance(task, dict) else {}
            item = queued.get((_int(data.get("round")), data.get("key")))
            if item is None:
                raise DataError(f"{where}: data.key {data.get('key')!r} / data.round {data.get('round')!r} name "
                                "no queued image (tasks must come from this queue's export-labelstudio)")
            answer = _label_studio_answer(task, item, oracle.victim_classes, where)
            if answer is None:
                report.unanswered += 1
                continue
            _save(oracle, item, *answer, where)
            report.saved.append(item.key)
        except DataError as err:
            report.refused.append(str(err))
    return report


def _save(oracle: HumanOracle, item: QueuedImage, label_text: str, disaster_class: str, where: str) -> None:
    """save_answer, a refusal naming the tool's entry first, then the queue's file and line."""
    try:
        oracle.save_answer(item.round_num, item.key, label_text, disaster_class)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---- COCO for CVAT --------------------------------------------------------------------------
def export_coco(oracle: HumanOracle, min_score: float, copy_images_to: Path | None = None) -> dict:
    """COCO of the waiting images, file_name their key, the model's boxes as annotations;
    copy_images_to: the images copied there under their keys, to zip and upload as the task's data."""
    images, annotations = [], []
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(oracle.victim_classes)]
    for n, item in enumerate(waiting(oracle), start=1):
        images.append({"id": n, "file_name": item.key, "width": item.width, "height": item.height})
        if copy_images_to is not None:
            target = copy_images_to / item.key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.image, target)
        if not item.wants_boxes:
            continue
        for x0, y0, x1, y1, name, score in model_boxes(oracle, item, min_score)[0]:
            annotations.append({"id": len(annotations) + 1, "image_id": n, "iscrowd": 0, "score": score,
                                "category_id": oracle.victim_classes.index(name) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    return {"images": images, "annotations": annotations, "categories": categories}


def _match(key: str, items: dict[str, QueuedImage], by_name: dict[str, list]) -> QueuedImage | None:
    """The waiting image a COCO file_name names: its key, or a file name unique in the queue."""
    if key in items:
        return items[key]
    named = by_name.get(PurePosixPath(key).name, [])
    return named[0] if len(named) == 1 else None


def import_coco(oracle: HumanOracle, path: Path) -> ImportReport:
    """CVAT's COCO export: every image listed is an answer (no boxes: no victims); the disaster
    class, where asked for, is the sheet's."""
    coco = read_coco(path, oracle.victim_classes)
    report = ImportReport(refused=[str(e) for e in coco.problems] + [str(e) for e in coco.bad_images.values()])
    items = {item.key: item for item in waiting(oracle)}
    by_name: dict[str, list] = {}
    for item in items.values():
        by_name.setdefault(PurePosixPath(item.key).name, []).append(item)
    for key, image in coco.images.items():
        try:
            item = _match(key, items, by_name)
            if item is None:
                raise DataError(f"{image.where}: {key} is no waiting image of this queue (taken, answered "
                                "or never queued), or its file name is ambiguous")
            image.check_size(item.width, item.height)
            if item.wants_class and not item.disaster_class:
                raise DataError(f"{image.where}: {item.key} needs a disaster class, which COCO does not carry: "
                                f"fill its disaster_class in {oracle.queue_dir / str(item.round_num) / 'classes.csv'} "
                                "or pick it on the labeling page, then import again")
            boxes = [[*box, oracle.victim_classes[c]] for box, c in zip(image.boxes, image.classes)]
            _save(oracle, item, yolo_lines(boxes, item, oracle.victim_classes, image.where), item.disaster_class,
                  image.where)
            report.saved.append(item.key)
        except DataError as err:
            report.refused.append(str(err))
    return report


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, json.dumps(data, indent=1).encode("utf-8"))
