// The labeling page: the site's queued images one by one, the model's boxes, class and mask as
// a start, edited with the mouse and keyboard, saved through the server's checks. A mask is a
// class number per pixel (state.mask), painted with a round brush and shown as a colour layer.
// Plain script, no build step, nothing loaded from elsewhere.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const token = new URLSearchParams(location.search).get("token") || "";
const timings = (window.labelTimings = {});  // ms since navigation start: list shown, first image shown
const state = {
  items: [], index: -1, item: null, boxes: [], original: [], selected: -1, drag: null,
  victimClasses: [], disasterClasses: [], skipped: new Set(),
  maskClasses: [], maskPalette: [], unlabeled: 255, mask: null, maskOriginal: null, maskClass: 0,
  mode: "boxes", paint: null,
};
const BOX_HINT = "Drag on the image to add a box. Drag a box to move it, a corner to resize it.";
const MASK_HINT = "Paint the mask: drag over the image with the brush in the chosen class; the eraser " +
  "paints pixels back to unlabeled. Unlabeled pixels teach the model nothing.";
const $ = (id) => document.getElementById(id);

function api(path, params = {}, options = {}) {
  const url = new URL(path, location.href);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return fetch(url, { ...options, headers: { "X-Label-Token": token, ...(options.headers || {}) } });
}

function imageUrl(item) {
  const url = new URL("api/image", location.href);
  url.searchParams.set("round", item.round);
  url.searchParams.set("key", item.key);
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function svgElement(name, attributes) {
  const node = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  return node;
}

function showMessage(text, isError) {
  const box = $("message");
  box.textContent = text || "";
  box.className = isError ? "error" : "ok";
}

function updateProgress(labeled, total) {
  $("progress").textContent = `${labeled} of ${total} labeled`;
}

// ---- the queue ---------------------------------------------------------------------------
async function loadQueue() {
  const response = await api("api/queue");
  const queue = await response.json();
  if (!response.ok) return showMessage(queue.error, true);
  state.items = queue.items;
  state.victimClasses = queue.victim_classes;
  state.disasterClasses = queue.disaster_classes;
  state.maskClasses = queue.mask_classes || [];
  state.maskPalette = queue.mask_palette || [];
  state.unlabeled = queue.unlabeled;
  state.maskClass = state.maskClasses.length > 1 ? 1 : 0;  // the first class after background
  $("site").textContent = `Site ${queue.site}`;
  renderDisasterChoices();
  renderMaskChoices();
  $("victim-class").replaceChildren(...state.victimClasses.map((name) => new Option(name, name)));
  renderList();
  updateProgress(queue.labeled, queue.total);
  timings.list = performance.now();
  if (!state.items.length) {
    $("empty").hidden = false;
    return;
  }
  const first = state.items.findIndex((item) => item.status === "waiting");
  openItem(first >= 0 ? first : 0);
}

function renderList() {
  const list = $("items");
  list.replaceChildren(...state.items.map((item, i) => {
    const li = document.createElement("li");
    li.textContent = item.key.split("/").pop();
    li.title = `${item.key} (round ${item.round}, ${item.status})`;
    li.className = item.status + (state.skipped.has(`${item.round}/${item.key}`) ? " skipped" : "") +
      (i === state.index ? " active" : "");
    li.dataset.index = i;
    li.addEventListener("click", () => openItem(i));
    return li;
  }));
}

function renderDisasterChoices() {
  $("disaster").replaceChildren(...state.disasterClasses.map((name, i) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { type: "radio", name: "disaster", value: name });
    input.addEventListener("change", () => input.blur());  // arrow keys stay the page's shortcuts
    const prob = Object.assign(document.createElement("span"), { className: "prob" });
    label.append(input, `${i + 1} ${name.replaceAll("_", " ")}`, prob);
    return label;
  }));
}

function renderMaskChoices() {
  const choices = [...state.maskClasses.map((name, i) => [i, name.replaceAll("_", " "), state.maskPalette[i]]),
    [state.unlabeled, "eraser (unlabeled)", null]];
  $("mask-classes").replaceChildren(...choices.map(([value, text, colour]) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { type: "radio", name: "mask-class", value });
    input.checked = value === state.maskClass;
    input.addEventListener("change", () => { state.maskClass = value; input.blur(); });
    const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
    swatch.style.background = colour ? `rgb(${colour.join(",")})` : "transparent";
    label.append(input, swatch, text);
    return label;
  }));
}

function pickMaskClass(value) {
  state.maskClass = value;
  for (const input of document.querySelectorAll("#mask-classes input")) input.checked = Number(input.value) === value;
}

function chosenDisaster() {
  const checked = document.querySelector("#disaster input:checked");
  return checked ? checked.value : "";
}

function pickDisaster(name) {
  for (const input of document.querySelectorAll("#disaster input")) input.checked = input.value === name;
}

// ---- one image -------------------------------------------------------------------------------
async function openItem(index, note) {
  if (index < 0 || index >= state.items.length) return;
  const item = state.items[index];
  state.index = index;
  state.item = item;
  renderList();
  $("items").children[index].scrollIntoView({ block: "nearest" });
  $("current").textContent = `${item.key} (round ${item.round})`;
  const response = await api("api/item", { round: item.round, key: item.key });
  const answer = await response.json();
  if (!response.ok) return showMessage(answer.error, true);
  if (state.item !== item) return;  // another image was opened meanwhile
  state.boxes = answer.boxes.map(([x0, y0, x1, y1, cls, score]) =>
    ({ x0, y0, x1, y1, cls, score, model: answer.source === "model" }));
  state.original = state.boxes.map((box) => ({ ...box }));
  state.selected = -1;
  state.disaster = answer.disaster_class;
  pickDisaster(answer.disaster_class);
  state.mask = item.wants_mask ? decodeMask(answer.mask, item) : null;
  state.maskOriginal = state.mask && state.mask.slice();
  state.paint = null;
  for (const label of document.querySelectorAll("#disaster label")) {
    const p = (answer.disaster_probs || {})[label.querySelector("input").value];
    label.querySelector(".prob").textContent = p === undefined ? "" : `${Math.round(p * 100)} %`;
  }
  $("disaster-fieldset").disabled = !item.wants_class;
  $("victim-fieldset").disabled = !item.wants_boxes;
  $("mask-fieldset").hidden = !item.wants_mask;
  $("disaster-fieldset").hidden = item.wants_mask && !item.wants_class;  // a mask-only image: the mask tools only
  $("victim-fieldset").hidden = item.wants_mask && !item.wants_boxes;
  $("mode-fieldset").hidden = !(item.wants_mask && item.wants_boxes);
  setMode(item.wants_mask && !item.wants_boxes ? "mask" : item.wants_mask ? state.mode : "boxes");
  const source = item.wants_mask && answer.mask_source !== "none" ? answer.mask_source : answer.source;
  const intro = answer.problem ? null : source === "model"
    ? "The labels shown are the model's guesses: correct them, then save."
    : source === "answer" ? "This image is answered; edit and save again to change it." : "";
  if (answer.problem) showMessage(`The saved answer is not taken by the site: ${answer.problem}`, true);
  else showMessage(note ? `${note} ${intro}` : intro, false);
  const margin = Math.round(0.06 * Math.max(item.width, item.height));
  const svg = $("canvas");
  svg.setAttribute("viewBox", `${-margin} ${-margin} ${item.width + 2 * margin} ${item.height + 2 * margin}`);
  const photo = $("photo");
  photo.setAttribute("width", item.width);
  photo.setAttribute("height", item.height);
  photo.onload = () => {
    timings.firstImage = timings.firstImage || performance.now();
    svg.dataset.shown = `${item.round}/${item.key}`;
  };
  delete svg.dataset.shown;
  photo.setAttribute("href", imageUrl(item));
  const layer = $("mask-layer");
  layer.setAttribute("width", item.width);
  layer.setAttribute("height", item.height);
  renderMask();
  renderBoxes();
}

function scale() {
  const ctm = $("canvas").getScreenCTM();
  return ctm ? ctm.a : 1;
}

function outside(box) {
  const { width, height } = state.item;
  return Math.min(box.x0, box.x1) < 0 || Math.min(box.y0, box.y1) < 0 ||
    Math.max(box.x0, box.x1) > width || Math.max(box.y0, box.y1) > height;
}

function renderBoxes() {
  const group = $("boxes");
  const s = scale();
  const h = 10 / s;
  const bodies = [], handles = [];  // every corner above every box, so none is hidden
  state.boxes.forEach((box, i) => {
    const x0 = Math.min(box.x0, box.x1), x1 = Math.max(box.x0, box.x1);
    const y0 = Math.min(box.y0, box.y1), y1 = Math.max(box.y0, box.y1);
    const g = svgElement("g", {
      class: `box${box.model ? " model" : ""}${i === state.selected ? " selected" : ""}${outside(box) ? " outside" : ""}`,
      "data-index": i,
    });
    g.append(svgElement("rect", { class: "body", x: x0, y: y0, width: x1 - x0, height: y1 - y0, "stroke-width": 2 / s }));
    const text = svgElement("text", { x: x0, y: y0 - 4 / s, "font-size": 12 / s, "stroke-width": 3 / s });
    text.textContent = box.cls + (box.model && box.score !== undefined ? ` ${box.score.toFixed(2)}` : "");
    g.append(text);
    bodies.push(g);
    const corners = svgElement("g", { class: "handles", "data-index": i });
    for (const [corner, x, y] of [["nw", x0, y0], ["ne", x1, y0], ["sw", x0, y1], ["se", x1, y1]]) {
      corners.append(svgElement("rect", { class: "handle", "data-corner": corner, x: x - h / 2, y: y - h / 2,
        width: h, height: h, "stroke-width": 1 / s, style: `cursor: ${corner}-resize` }));
    }
    handles.push(corners);
  });
  const shown = !state.item || state.item.wants_boxes || !state.item.wants_mask;  // a mask-only image: no boxes
  group.replaceChildren(...(shown ? [...bodies, ...handles] : []));
  const selected = state.boxes[state.selected];
  $("victim-class").disabled = $("delete").disabled = !selected;
  if (selected) $("victim-class").value = selected.cls;
}

function select(i) {
  state.selected = i;
  renderBoxes();
}

function toImage(event) {
  const svg = $("canvas");
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  return point.matrixTransform(svg.getScreenCTM().inverse());
}

// ---- the mask: a class number per pixel, painted with a round brush --------------------------------
function decodeMask(text, item) {
  const mask = new Uint8Array(item.width * item.height).fill(state.unlabeled);
  if (!text) return mask;
  const raw = atob(text);
  for (let i = 0; i < mask.length && i < raw.length; i++) mask[i] = raw.charCodeAt(i);
  return mask;
}

function encodeMask(mask) {
  let text = "";
  for (let i = 0; i < mask.length; i += 0x8000) text += String.fromCharCode(...mask.subarray(i, i + 0x8000));
  return btoa(text);
}

function renderMask() {
  const layer = $("mask-layer");
  if (!state.mask) return layer.removeAttribute("href");
  const { width, height } = state.item;
  const canvas = Object.assign(document.createElement("canvas"), { width, height });
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  let painted = 0;
  for (let i = 0; i < state.mask.length; i++) {
    const colour = state.maskPalette[state.mask[i]];
    if (!colour) continue;  // unlabeled: transparent
    pixels.data.set(colour, 4 * i);
    pixels.data[4 * i + 3] = 255;
    painted++;
  }
  context.putImageData(pixels, 0, 0);
  layer.setAttribute("href", canvas.toDataURL());
  $("canvas").dataset.maskPainted = String(painted);  // labeled pixels, for tests and tools
}

function brushRadius() {
  return Number($("brush").value);
}

function paintDisc(cx, cy) {
  const { width, height } = state.item;
  const r = brushRadius();
  for (let y = Math.max(0, Math.ceil(cy - r)); y <= Math.min(height - 1, Math.floor(cy + r)); y++) {
    for (let x = Math.max(0, Math.ceil(cx - r)); x <= Math.min(width - 1, Math.floor(cx + r)); x++) {
      if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r * r) state.mask[y * width + x] = state.maskClass;
    }
  }
}

function paintTo(p) {  // the stroke from the last point to p, discs half a radius apart
  const from = state.paint.last;
  const steps = Math.max(1, Math.ceil(Math.hypot(p.x - from.x, p.y - from.y) / Math.max(brushRadius() / 2, 0.5)));
  for (let k = 1; k <= steps; k++) paintDisc(from.x + (p.x - from.x) * k / steps, from.y + (p.y - from.y) * k / steps);
  state.paint.last = p;
  if (!state.paint.frame) {
    state.paint.frame = requestAnimationFrame(() => { if (state.paint) state.paint.frame = 0; renderMask(); });
  }
}

function fillBackground() {
  if (!state.mask) return;
  const background = Math.max(0, state.maskClasses.indexOf("background"));
  state.mask.forEach((v, i) => { if (v === state.unlabeled) state.mask[i] = background; });
  renderMask();
}

function setMode(mode) {
  state.mode = mode;
  for (const input of document.querySelectorAll("#mode-fieldset input")) input.checked = input.value === mode;
  $("canvas").classList.toggle("painting", mode === "mask");
  $("hint").textContent = mode === "mask" ? MASK_HINT : BOX_HINT;
  $("brush-size").textContent = `${brushRadius()} px`;
}

// ---- mouse: add, move, resize boxes; paint the mask ---------------------------------------------
function onPointerDown(event) {
  if (state.item && state.item.wants_mask && state.mode === "mask" && event.button === 0) {
    const p = toImage(event);
    state.paint = { last: p, frame: 0 };
    paintTo(p);
    $("canvas").setPointerCapture(event.pointerId);
    event.preventDefault();
    return;
  }
  if (!state.item || !state.item.wants_boxes || event.button !== 0) return;
  const p = toImage(event);
  const group = event.target.closest("[data-index]");
  if (group) {
    const i = Number(group.dataset.index);
    state.selected = i;
    const corner = event.target.dataset.corner;
    state.drag = corner ? { mode: "resize", i, corner } : { mode: "move", i, start: p, from: { ...state.boxes[i] } };
  } else {
    state.drag = { mode: "draw", i: -1, start: p };
  }
  $("canvas").setPointerCapture(event.pointerId);
  event.preventDefault();
  renderBoxes();
}

function onPointerMove(event) {
  if (state.paint) return paintTo(toImage(event));
  const drag = state.drag;
  if (!drag) return;
  const p = toImage(event);
  if (drag.mode === "draw" && drag.i < 0) {
    if (Math.hypot(p.x - drag.start.x, p.y - drag.start.y) * scale() < 4) return;  // a click, not a box
    state.boxes.push({ x0: drag.start.x, y0: drag.start.y, x1: p.x, y1: p.y, cls: state.victimClasses[0], model: false });
    drag.i = state.selected = state.boxes.length - 1;
  }
  const box = state.boxes[drag.i];
  box.model = false;  // edited: the labeler's box now
  if (drag.mode === "move") {
    const dx = p.x - drag.start.x, dy = p.y - drag.start.y;
    Object.assign(box, { x0: drag.from.x0 + dx, x1: drag.from.x1 + dx, y0: drag.from.y0 + dy, y1: drag.from.y1 + dy });
  } else if (drag.mode === "draw") {
    Object.assign(box, { x1: p.x, y1: p.y });
  } else {  // corners are named on the box as it was put straight at the last pointer-up
    if (drag.corner.includes("w")) box.x0 = p.x; else box.x1 = p.x;
    if (drag.corner.includes("n")) box.y0 = p.y; else box.y1 = p.y;
  }
  renderBoxes();
}

function onPointerUp() {
  if (state.paint) {
    cancelAnimationFrame(state.paint.frame);
    state.paint = null;
    return renderMask();
  }
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (drag.mode === "draw" && drag.i < 0) state.selected = -1;  // a click on the image: deselect
  for (const box of state.boxes) {
    [box.x0, box.x1] = [Math.min(box.x0, box.x1), Math.max(box.x0, box.x1)];
    [box.y0, box.y1] = [Math.min(box.y0, box.y1), Math.max(box.y0, box.y1)];
  }
  renderBoxes();
}

function deleteSelected() {
  if (state.selected < 0) return;
  state.boxes.splice(state.selected, 1);
  state.selected = -1;
  renderBoxes();
}

// ---- save, skip, move on ---------------------------------------------------------------------
function nextIndex() {
  const n = state.items.length;
  const open = (i) => state.items[i].status === "waiting";
  for (const wanted of [(i) => open(i) && !state.skipped.has(`${state.items[i].round}/${state.items[i].key}`), open]) {
    for (let step = 1; step <= n; step++) {
      const i = (state.index + step) % n;
      if (wanted(i)) return i;
    }
  }
  return -1;
}

async function save() {
  const item = state.item;
  if (!item) return;
  const body = {
    round: item.round, key: item.key,
    boxes: item.wants_boxes ? state.boxes.map((b) => [b.x0, b.y0, b.x1, b.y1, b.cls]) : [],
    disaster_class: item.wants_class ? chosenDisaster() : "",
  };
  if (item.wants_mask) body.mask = encodeMask(state.mask);
  const response = await api("api/answer", {}, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const result = await response.json();
  if (!response.ok) return showMessage(`Not saved: ${result.error}`, true);
  item.status = "done";
  state.skipped.delete(`${item.round}/${item.key}`);
  updateProgress(result.labeled, result.total);
  const next = nextIndex();
  const note = `Saved ${item.key}.`;
  if (next >= 0) openItem(next, note);
  else {
    renderList();
    showMessage(`${note} Every queued image is answered: the site takes them at its next round.`, false);
  }
}

function skip() {
  if (!state.item) return;
  state.skipped.add(`${state.item.round}/${state.item.key}`);
  const next = nextIndex();
  if (next >= 0 && next !== state.index) openItem(next, `Skipped ${state.item.key}.`);
  else renderList();
}

function resetBoxes() {
  state.boxes = state.original.map((box) => ({ ...box }));
  state.selected = -1;
  pickDisaster(state.disaster);
  state.mask = state.maskOriginal && state.maskOriginal.slice();
  renderMask();
  renderBoxes();
}

function onKey(event) {
  if ($("help").open || event.target.tagName === "SELECT") return;
  const key = event.key;
  if (key === "Enter" || (key.toLowerCase() === "s" && (event.ctrlKey || event.metaKey))) {
    event.preventDefault();
    save();
  } else if (key.toLowerCase() === "s") skip();
  else if (key === "ArrowRight") openItem(state.index + 1);
  else if (key === "ArrowLeft") openItem(state.index - 1);
  else if (/^[1-9]$/.test(key) && state.item && state.item.wants_class) {
    const name = state.disasterClasses[Number(key) - 1];
    if (name) pickDisaster(name);
  } else if (/^[1-9]$/.test(key) && state.item && state.item.wants_mask) {
    if (Number(key) <= state.maskClasses.length) pickMaskClass(Number(key) - 1);
  } else if (state.item && state.item.wants_mask && ["m", "e", "b", "[", "]"].includes(key.toLowerCase())) {
    const lower = key.toLowerCase();
    if (lower === "m" && state.item.wants_boxes) setMode(state.mode === "mask" ? "boxes" : "mask");
    else if (lower === "e") pickMaskClass(state.unlabeled);
    else if (lower === "b") fillBackground();
    else if (key === "[" || key === "]") {
      $("brush").value = brushRadius() + (key === "]" ? 2 : -2);
      setMode(state.mode);
    }
  } else if (key === "Delete" || key === "Backspace") deleteSelected();
  else if (key === "Tab" && state.boxes.length) {
    event.preventDefault();
    select((state.selected + (event.shiftKey ? state.boxes.length - 1 : 1)) % state.boxes.length);
  } else if (key.toLowerCase() === "u") resetBoxes();
  else if (key === "Escape") select(-1);
  else if (key === "?") $("help").showModal();
}

function start() {
  const svg = $("canvas");
  svg.addEventListener("pointerdown", onPointerDown);
  svg.addEventListener("pointermove", onPointerMove);
  svg.addEventListener("pointerup", onPointerUp);
  window.addEventListener("resize", renderBoxes);
  document.addEventListener("keydown", onKey);
  $("save").addEventListener("click", save);
  $("skip").addEventListener("click", skip);
  $("reset").addEventListener("click", resetBoxes);
  $("delete").addEventListener("click", deleteSelected);
  $("fill-background").addEventListener("click", fillBackground);
  $("brush").addEventListener("input", () => setMode(state.mode));
  $("brush").addEventListener("change", () => $("brush").blur());  // arrow keys stay the page's shortcuts
  for (const input of document.querySelectorAll("#mode-fieldset input")) {
    input.addEventListener("change", () => { setMode(input.value); input.blur(); });
  }
  $("help-button").addEventListener("click", () => $("help").showModal());
  $("victim-class").addEventListener("change", (event) => {
    const box = state.boxes[state.selected];
    if (box) Object.assign(box, { cls: event.target.value, model: false });
    renderBoxes();
  });
  loadQueue();
}

start();
