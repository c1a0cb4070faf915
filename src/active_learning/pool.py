"""One site's labeled set and unlabeled pool, persisted so that no label is ever lost.

Active learning spends the scarcest thing a disaster site has, annotator
time; a label acquired and then lost to a crash or a collaborator restarted
mid-federation is paid for twice. So the labeled set lives in a small JSON
state file, rewritten atomically (``src.atomic_files``) after every change:
a restarted collaborator reads the previous state or the new one, never half.

An image is named by its manifest key (``images/00012.jpg``, or
``<source>/<path>`` at a sources.yaml site): the string of manifest.tsv,
unlike ``Record.image_path`` stable when a workspace or data folder moves.

Labeled = the seed (the manifest's ``train`` rows, with the labels the site
holds) plus every image an oracle answered, with the labels it gave. The
Records of ``pool`` rows may carry true labels (the simulated oracle reveals
them); those reach training only through an answer, and
``unlabeled_records`` strips them so that a scorer cannot cheat.

State file (JSON)::

    version: 1
    site: site name (a state file of another site is refused)
    seed: the seed keys at the last save (informational)
    acquired: {key: {round, requested_round, strategy, oracle, tasks: [boxes, class, masks],
               boxes: [[x0, y0, x1, y1], ...] (pixels), victim_classes: [name, ...],
               disaster_class: name or null, mask: path or null}}
    pending: {key: {round, strategy, oracle}}   requested, not answered yet
    history: [{event: requested | labeled, round, strategy, oracle, keys: [...]}]

Classes are stored by name, as in the label files, so that reordering the
class lists in the config cannot relabel acquired images. An acquired mask is a
label map (a PNG), not a list: the pool copies the oracle's file beside the
state file (``<state stem>_masks/<key>.png``, before the state names it) and the
entry names the copy relative to that folder, so the label outlives the oracle's
files (a human queue cleared, a data folder moved).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from src.atomic_files import write_bytes_atomically
from src.data.manifests import SiteData, load_site
from src.data.formats import DataError, inside_folder, read_text_file
from src.data.records import Record
from src.model.config import TASKS as MODEL_TASKS

log = logging.getLogger(__name__)

STATE_VERSION = 1
TASKS = tuple(task.name for task in MODEL_TASKS)  # boxes, class, masks
LABEL_FLAGS = {task.name: task.label for task in MODEL_TASKS}  # the Record flag of each task's label
COUNTED_ALWAYS = ("boxes", "class")  # labeled_<task> counts every site reports; others where trained


@dataclass(frozen=True)
class Answer:
    """The labels an oracle gave for one image.

    boxes: (N, 4) float32 xyxy pixels and victim_classes (N,) indices, read
    when has_boxes (an empty list then means "no victims"); disaster_class:
    an index, read when has_class; mask_path: the image's label map (a PNG of
    mask class indices, as ``Record.mask_path``), read when has_mask.
    """

    boxes: np.ndarray
    victim_classes: np.ndarray
    disaster_class: int = -1
    has_boxes: bool = False
    has_class: bool = False
    mask_path: str | None = None
    has_mask: bool = False

    def __post_init__(self):
        probe = Record("answer", self.boxes, self.victim_classes, self.disaster_class,
                       self.has_boxes, self.has_class, mask_path=self.mask_path,
                       has_mask=self.has_mask)  # the Record's own shape checks
        object.__setattr__(self, "boxes", probe.boxes)
        object.__setattr__(self, "victim_classes", probe.victim_classes)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if getattr(self, LABEL_FLAGS[t]))

    @classmethod
    def of_record(cls, record: Record, tasks=TASKS) -> "Answer":
        """The labels of `tasks` a Record holds (what the simulated oracle reveals)."""
        held = {t: bool(getattr(record, LABEL_FLAGS[t])) and t in tasks for t in TASKS}
        return cls(record.boxes, record.victim_classes, record.disaster_class if held["class"] else -1,
                   held["boxes"], held["class"], record.mask_path if held["masks"] else None, held["masks"])


def without_labels(record: Record) -> Record:
    """The record as an unlabeled pool image: nothing a scorer could cheat with."""
    return replace(record, boxes=np.zeros((0, 4), np.float32), victim_classes=np.zeros((0,), np.int32),
                   disaster_class=-1, has_boxes=False, has_class=False,
                   crowd_boxes=np.zeros((0, 4), np.float32), crowd_classes=np.zeros((0,), np.int32),
                   mask_path=None, has_mask=False)


def with_answer(record: Record, answer: Answer) -> Record:
    """The record carrying exactly the labels of `answer` (nothing held back besides)."""
    return replace(without_labels(record), boxes=answer.boxes, victim_classes=answer.victim_classes,
                   disaster_class=answer.disaster_class if answer.has_class else -1,
                   has_boxes=answer.has_boxes, has_class=answer.has_class,
                   mask_path=answer.mask_path if answer.has_mask else None, has_mask=answer.has_mask)


def site_keys(site_folder, records: Iterable[Record]) -> dict[str, Record]:
    """{manifest key: record} for records `load_site` read from `site_folder`."""
    meta = yaml.safe_load((Path(site_folder) / "site.yaml").read_text()) or {}
    root = Path(site_folder) / meta["data_root"] if meta.get("data_root") else None
    # a sources.yaml site's records know their key; a YOLO site's are under data_root
    return {getattr(r, "key", "") or Path(r.image_path).relative_to(root).as_posix(): r for r in records}


class LabelPool:
    """A site's labeled images (seed + acquired) and its unlabeled pool; see the module docstring.

    Build it with ``load_or_create`` (or ``from_site``); every change is saved at once.
    tasks: which labels the site trains ("boxes", "class", "masks"); default: those its seed or pool hold.
    """

    def __init__(self, state_path, site: str, seed: Mapping[str, Record], pool: Mapping[str, Record],
                 victim_classes: Sequence[str], disaster_classes: Sequence[str], tasks=None):
        both = sorted(set(seed) & set(pool))
        if both:
            raise ValueError(f"site {site}: image(s) both labeled (train) and in the pool: {both[:3]}")
        self.state_path, self.site = Path(state_path), site
        self.victim_classes, self.disaster_classes = list(victim_classes), list(disaster_classes)
        self._seed, self._pool = dict(seed), dict(pool)
        held = list(seed.values()) + list(pool.values())
        self.tasks = tuple(tasks) if tasks is not None else tuple(
            t for t in TASKS if any(getattr(r, LABEL_FLAGS[t]) for r in held))
        self._acquired: dict[str, dict] = {}  # key -> state entry
        self._answers: dict[str, Answer] = {}
        self._pending: dict[str, dict] = {}
        self._history: list[dict] = []

    # ------------------------------------------------------------------ creating and persisting

    @classmethod
    def load_or_create(cls, state_path, site: str, seed: Mapping[str, Record], pool: Mapping[str, Record],
                       victim_classes: Sequence[str], disaster_classes: Sequence[str], tasks=None) -> "LabelPool":
        """Resume from `state_path` if it exists (every stored key must still be in the
        site's data), else start from the seed and write the state file."""
        self = cls(state_path, site, seed, pool, victim_classes, disaster_classes, tasks)
        if self.state_path.exists():
            self._restore(self._read_state())
        else:
            self.save()
        return self

    @classmethod
    def from_site(cls, site_folder, state_path, victim_classes, disaster_classes, tasks=None,
                  on_error: str = "raise") -> "LabelPool":
        """The pool of a site folder (site.yaml + manifest.tsv): train rows seed, pool rows pool."""
        site = load_site(site_folder, victim_classes, disaster_classes, on_error)
        return cls.from_site_data(site, site_folder, state_path, victim_classes, disaster_classes, tasks)

    @classmethod
    def from_site_data(cls, site: SiteData, site_folder, state_path, victim_classes, disaster_classes,
                       tasks=None) -> "LabelPool":
        """As from_site, for a site already loaded (a collaborator's data loader has it)."""
        return cls.load_or_create(state_path, site.name, site_keys(site_folder, site.train),
                                  site_keys(site_folder, site.pool), victim_classes, disaster_classes, tasks)

    def save(self) -> None:
        state = {"version": STATE_VERSION, "site": self.site, "seed": list(self._seed),
                 "acquired": self._acquired, "pending": self._pending, "history": self._history}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(self.state_path, (json.dumps(state, indent=1) + "\n").encode("utf-8"))

    def _read_state(self) -> dict:
        try:
            state = json.loads(read_text_file(self.state_path))
        except json.JSONDecodeError as e:
            raise DataError(f"{self.state_path}: line {e.lineno}: not a valid state file ({e.msg})") from e
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"{self.state_path}: not an active-learning state file of version {STATE_VERSION}")
        if state.get("site") != self.site:
            raise DataError(f"{self.state_path}: state of site {state.get('site')!r}, not of {self.site!r}")
        return state

    def _restore(self, state: dict) -> None:
        where = str(self.state_path)
        for section in ("acquired", "pending"):
            for key in state.get(section) or {}:
                if key not in self._seed and key not in self._pool:
                    raise DataError(f"{where}: image {key!r} ({section}) is no longer in site {self.site}'s "
                                    "data (its manifest train/pool rows); restore the image, or remove the "
                                    "entry from the state file (its label is lost then)")
        for key, entry in (state.get("acquired") or {}).items():
            self._answers[key] = self._answer_from_entry(entry, f"{where}: image {key!r}")
            self._acquired[key] = entry
            if key in self._seed:
                log.info("%s: %s is in the manifest's train rows now; its manifest labels are used", where, key)
        labeled = set(self.labeled_keys)
        self._pending = {k: v for k, v in (state.get("pending") or {}).items() if k not in labeled}
        self._history = list(state.get("history") or [])

    @property
    def mask_dir(self) -> Path:
        """Where acquired masks are kept: beside the state file (see the module docstring)."""
        return self.state_path.with_name(f"{self.state_path.stem}_masks")

    def _answer_from_entry(self, entry: dict, where: str) -> Answer:
        victims = {name: i for i, name in enumerate(self.victim_classes)}
        disasters = {name: i for i, name in enumerate(self.disaster_classes)}
        try:
            tasks, names, disaster = entry["tasks"], entry["victim_classes"], entry["disaster_class"]
            unknown = [n for n in names if n not in victims] + \
                ([disaster] if "class" in tasks and disaster not in disasters else [])
            if unknown:
                raise DataError(f"{where}: unknown class name(s) {unknown} (victim: {self.victim_classes}, "
                                f"disaster: {self.disaster_classes})")
            mask = None
            if "masks" in tasks:
                mask = inside_folder(self.mask_dir / entry["mask"], self.mask_dir, "mask file")
                if not mask.is_file():
                    raise DataError(f"{where}: its mask {mask} is missing; restore it, or remove the entry "
                                    "from the state file (its label is lost then)")
            return Answer(np.asarray(entry["boxes"], np.float32), [victims[n] for n in names],
                          disasters[disaster] if "class" in tasks else -1, "boxes" in tasks, "class" in tasks,
                          str(mask) if mask else None, "masks" in tasks)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{where}: malformed entry ({type(e).__name__}: {e})") from e

    # ------------------------------------------------------------------ reading

    @property
    def labeled_keys(self) -> list[str]:
        return list(self._seed) + [k for k in self._acquired if k not in self._seed]

    @property
    def pending(self) -> dict[str, dict]:
        """{key: {round, strategy, oracle}} of images requested and not answered yet."""
        return {k: dict(v) for k, v in self._pending.items()}

    @property
    def history(self) -> list[dict]:
        return [dict(h) for h in self._history]

    def requested_rounds(self) -> set[int]:
        """The rounds in which a label request was made."""
        return {int(h["round"]) for h in self._history if h["event"] == "requested"}

    def acquisition(self, key: str) -> dict:
        """The state entry of an acquired image (round, strategy, oracle, labels)."""
        return dict(self._acquired[key])

    def labeled_records(self) -> list[Record]:
        """What training sees: the seed, then acquired images with the labels their oracle gave."""
        return list(self._seed.values()) + [with_answer(self._pool[k], self._answers[k])
                                            for k in self._acquired if k not in self._seed]

    def unlabeled_records(self) -> dict[str, Record]:
        """{key: record without labels} of pool images neither labeled nor waiting for an answer."""
        return {k: without_labels(r) for k, r in self._pool.items()
                if k not in self._acquired and k not in self._pending}

    def pending_records(self) -> dict[str, Record]:
        """{key: record without labels} of images requested and not answered yet."""
        return {k: without_labels(self._pool[k]) for k in self._pending}

    def held_back(self) -> dict[str, Record]:
        """The pool's Records as loaded, true labels included: for the simulated oracle only."""
        return dict(self._pool)

    def counts(self) -> dict[str, int]:
        labeled = self.labeled_records()
        return {"labeled": len(labeled), "seed": len(self._seed), "acquired": len(labeled) - len(self._seed),
                "pool": len(self._pool) - (len(labeled) - len(self._seed)), "pending": len(self._pending),
                **{f"labeled_{t}": sum(getattr(r, LABEL_FLAGS[t]) for r in labeled)
                   for t in TASKS if t in COUNTED_ALWAYS or t in self.tasks}}

    # ------------------------------------------------------------------ changing (each change saved)

    def mark_requested(self, keys: Iterable[str], round_num: int, strategy: str, oracle: str) -> None:
        """Record that `keys` (unlabeled pool images; pending ones may be asked again) were sent to `oracle`."""
        keys = list(keys)
        wrong = [k for k in keys if k not in self._pool or k in self._acquired]
        if wrong:
            raise ValueError(f"site {self.site}: cannot request {wrong[:3]}: not unlabeled pool images")
        for key in keys:
            self._pending[key] = {"round": int(round_num), "strategy": strategy, "oracle": oracle}
        self._history.append({"event": "requested", "round": int(round_num), "strategy": strategy,
                              "oracle": oracle, "keys": keys})
        self.save()

    def add_answers(self, answers: Mapping[str, Answer], round_num: int) -> list[str]:
        """Label the answered images; returns the newly labeled keys. Answers for images
        already acquired are ignored (an oracle may deliver one twice after a restart)."""
        new = [k for k in answers if k not in self._acquired]
        unasked = [k for k in new if k not in self._pending]
        if unasked:
            raise ValueError(f"site {self.site}: answers for images never requested: {unasked[:3]}")
        for key in new:
            answer = answers[key]
            extra = set(answer.tasks) - set(self.tasks)
            if extra:
                raise ValueError(f"site {self.site}: {key}: answer labels {sorted(extra)}, the site trains "
                                 f"only {list(self.tasks)}")
            if not (np.all((answer.victim_classes >= 0) & (answer.victim_classes < len(self.victim_classes)))
                    and answer.disaster_class < len(self.disaster_classes)):
                raise ValueError(f"site {self.site}: {key}: answer has a class index out of range")
            if answer.has_mask and not Path(answer.mask_path).is_file():
                raise ValueError(f"site {self.site}: {key}: the answer's mask {answer.mask_path} is not a file")
        for key in new:
            answer, asked = self._kept_mask(key, answers[key]), self._pending.pop(key)
            self._answers[key] = answer
            self._acquired[key] = {
                "round": int(round_num), "requested_round": asked["round"], "strategy": asked["strategy"],
                "oracle": asked["oracle"], "tasks": list(answer.tasks), "boxes": answer.boxes.tolist(),
                "victim_classes": [self.victim_classes[i] for i in answer.victim_classes],
                "disaster_class": self.disaster_classes[answer.disaster_class] if answer.has_class else None,
                "mask": Path(answer.mask_path).relative_to(self.mask_dir).as_posix() if answer.has_mask else None}
        if new:
            oracles = sorted({self._acquired[k]["oracle"] for k in new})
            self._history.append({"event": "labeled", "round": int(round_num), "strategy": None,
                                  "oracle": ",".join(oracles), "keys": new})
            self.save()
        return new

    def _kept_mask(self, key: str, answer: Answer) -> Answer:
        """`answer` with its mask copied under mask_dir (atomically), as the state will name it."""
        if not answer.has_mask:
            return answer
        kept = inside_folder(self.mask_dir / f"{key}.png", self.mask_dir, "mask file")
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(kept, Path(answer.mask_path).read_bytes())
        return replace(answer, mask_path=str(kept))
