"""The labeling page's server: a site's active-learning queue over HTTP, for a labeler's browser.

Flask on werkzeug's threaded server: one site, a few labelers, no process
manager to set up. The page (static/, plain HTML/JS/CSS, nothing fetched from
elsewhere) asks for the open rounds' images, the current answer or the global
model's pre-annotations of one image, the image itself, and posts an answer.
An answer goes through ``HumanOracle.save_answer``: the checks every label
gets, then the files the site ingests at its next round; a refusal comes back
as HTTP 422 with the reason, and nothing is written. A mask travels as base64 of
its raw class numbers, one byte per pixel row by row (255: unlabeled): exact,
where a browser's PNG decoding and encoding would not promise to be.
Bound to 127.0.0.1 unless told otherwise; with a token every request must carry
it (header ``X-Label-Token`` or ``?token=``), since the page writes a site's labels.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import threading
from pathlib import Path

import numpy as np
from flask import Flask, abort, jsonify, request, send_file
from werkzeug.serving import make_server

from src.active_learning.oracles import HumanOracle, QueuedImage
from src.data.formats import DataError, read_yolo_labels
from src.data.formats.masks import IGNORE_INDEX
from src.labeling.interchange import model_boxes, yolo_lines

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def encode_mask(mask: np.ndarray | None) -> str | None:
    return None if mask is None else base64.b64encode(np.ascontiguousarray(mask, np.uint8).tobytes()).decode()


def decode_mask(text, item: QueuedImage) -> np.ndarray:
    """The page's mask (base64 of width x height class bytes) as a (height, width) array."""
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) != item.width * item.height:
        got = "no base64 text" if raw is None else f"{len(raw)} values"
        raise DataError(f"the page's mask for {item.key}: {got}; expected base64 of {item.width}x{item.height} "
                        f"= {item.width * item.height} class bytes")
    return np.frombuffer(raw, np.uint8).reshape(item.height, item.width)


def current_mask(oracle: HumanOracle, item: QueuedImage) -> dict:
    """The label map the page starts from: the saved answer's, else the model's, else none."""
    answer = oracle.answer_mask(item)
    if item.status != "waiting" or (answer != IGNORE_INDEX).any():
        return {"mask": encode_mask(answer), "mask_source": "answer"}
    predicted = oracle.predicted_mask(item)
    return {"mask": encode_mask(predicted), "mask_source": "model" if predicted is not None else "none"}


def current_answer(oracle: HumanOracle, item: QueuedImage, min_score: float) -> dict:
    """What the page shows for one image: its saved answer when it has one, else the global
    model's detections scoring at least min_score and its predicted class (and label maps
    likewise, where the queue asks for masks)."""
    shown = _boxes_and_class(oracle, item, min_score)
    try:
        return {**shown, **(current_mask(oracle, item) if item.wants_mask else {})}
    except DataError as err:  # a mask edited by hand: show why it is not taken
        return {**shown, "mask": None, "mask_source": "none", "problem": str(err)}


def _boxes_and_class(oracle: HumanOracle, item: QueuedImage, min_score: float) -> dict:
    if item.status != "waiting":
        try:
            boxes, classes = read_yolo_labels(item.label_file, item.width, item.height, len(oracle.victim_classes))
        except DataError as err:  # an answer edited by hand after saving: show why it is not taken
            return {"boxes": [], "disaster_class": item.disaster_class, "source": "answer", "problem": str(err)}
        return {"boxes": [[*map(float, b), oracle.victim_classes[c]] for b, c in zip(boxes.tolist(), classes)],
                "disaster_class": item.disaster_class, "source": "answer"}
    boxes, disaster = model_boxes(oracle, item, min_score)
    probs = oracle.predictions(item.round_num).get(item.key, {}).get("disaster_probs", {})
    return {"boxes": boxes, "disaster_class": disaster, "source": "model" if disaster or boxes else "none",
            "disaster_probs": probs}


def create_app(oracle: HumanOracle, site: str, token: str | None = None, min_score: float = 0.3) -> Flask:
    """The page and its API over `oracle`'s queue folder."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    saving = threading.Lock()  # one answer at a time: save_answer's temporary files are per process

    def open_items() -> list[QueuedImage]:
        """The images of rounds the site has not taken whole yet."""
        items = oracle.queued()
        open_rounds = {i.round_num for i in items if i.status != "taken"}
        return [i for i in items if i.round_num in open_rounds]

    def find(round_num, key) -> QueuedImage:
        for item in oracle.queued():
            if str(item.round_num) == str(round_num) and item.key == key:
                return item
        abort(404, f"round {round_num}: no queued image {key!r}")

    def progress(items) -> dict:
        return {"labeled": sum(i.status != "waiting" for i in items), "total": len(items)}

    @app.before_request
    def check_token():
        """The page's own files are the repository's, the same for anyone; the queue is not."""
        if token is None or request.path == "/" or request.path.startswith("/static/"):
            return None
        given = request.headers.get("X-Label-Token") or request.args.get("token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return jsonify(error="this labeling page needs its token (open the address the server printed)"), 403
        return None

    @app.errorhandler(DataError)
    def refused(err):
        return jsonify(error=str(err)), 422

    @app.errorhandler(404)
    def not_found(err):
        return jsonify(error=err.description), 404

    @app.get("/")
    def page():
        return send_file(STATIC / "index.html", max_age=0)

    @app.get("/api/queue")
    def queue():
        items = open_items()
        return jsonify(site=site, victim_classes=oracle.victim_classes, disaster_classes=oracle.disaster_classes,
                       mask_classes=oracle.mask_classes, mask_palette=oracle.mask_palette, unlabeled=IGNORE_INDEX,
                       items=[{"round": i.round_num, "key": i.key, "width": i.width, "height": i.height,
                               "wants_boxes": i.wants_boxes, "wants_class": i.wants_class,
                               "wants_mask": i.wants_mask, "status": i.status} for i in items], **progress(items))

    @app.get("/api/item")
    def item():
        found = find(request.args.get("round"), request.args.get("key"))
        return jsonify(current_answer(oracle, found, min_score))

    @app.get("/api/image")
    def image():
        found = find(request.args.get("round"), request.args.get("key"))
        return send_file(found.image, max_age=3600)

    @app.post("/api/answer")
    def answer():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("boxes", []), list):
            raise DataError("the answer must be JSON: {round, key, boxes: [[x0, y0, x1, y1, class]], disaster_class, "
                            "mask: base64 of one class byte per pixel}")
        found = find(body.get("round"), body.get("key"))
        text = yolo_lines(body.get("boxes", []), found, oracle.victim_classes, "the page's answer")
        mask = decode_mask(body.get("mask"), found) if body.get("mask") is not None else None
        with saving:
            oracle.save_answer(found.round_num, found.key, text, str(body.get("disaster_class") or ""), mask)
        log.info("saved the answer for %s (round %d)", found.key, found.round_num)
        return jsonify(ok=True, **progress(open_items()))

    return app


def check_binding(host: str, token: str | None) -> None:
    """Anything but loopback needs a token: the page writes the site's labels."""
    if host not in LOOPBACK and not token:
        raise ValueError(f"--host {host} exposes the labeling page beyond this machine: give it a token "
                         "(--token, or let the server generate one)")


def serve(app: Flask, host: str, port: int, ready=None) -> None:
    """Serve until interrupted; `ready(server)` is called once it listens (port 0: any free port)."""
    server = make_server(host, port, app, threaded=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
