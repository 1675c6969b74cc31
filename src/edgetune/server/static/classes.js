// The class list: a card per class (record, add files, undo, rename, remove), adding classes.

import { setState } from "./app.js";
import { startCameraRecording, stopCameraRecording } from "./camera.js";
import { finishClip, startClip, timedClip } from "./microphone.js";
import { $, BACKGROUND, PALETTE, api, app, clipSeconds, el, isAudio, isImage, plural,
         toast } from "./ui.js";

const UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024;  // the server accepts 20 MB per request
const BACKGROUND_SECONDS = 6;                 // one background recording, cut into clips

export function renderClasses() {
  const classes = app.state.classes;
  $("classes-empty").hidden = classes.length > 0;
  $("add-background").hidden = app.kind !== "audio" || classes.some((c) => c.name === BACKGROUND);
  const list = $("class-list");
  const wanted = new Set(classes.map((c) => c.name));
  for (const [name, card] of app.cards) {
    if (!wanted.has(name)) {
      if (app.recording === name) stopRecording();
      card.remove();
      app.cards.delete(name);
    }
  }
  classes.forEach((cls, index) => {
    let card = app.cards.get(cls.name);
    if (!card) {
      card = classCard(cls.name);
      app.cards.set(cls.name, card);
    }
    if (list.children[index] !== card) list.insertBefore(card, list.children[index] || null);
    card.style.setProperty("--swatch", PALETTE[index % PALETTE.length]);
    updateCount(cls.name, cls.count);
    const can = canRecord();
    for (const record of card.querySelectorAll("button.record")) {
      record.disabled = !can;
      record.title = can ? "" : (app.kind === "audio" ? "No microphone: use Add clips instead"
                                                      : "No camera: use Add images instead");
    }
    card.querySelector("button.undo").disabled = cls.count === 0;
  });
}

export function updateCount(name, count) {
  const card = app.cards.get(name);
  if (!card || count === undefined) return;
  const node = card.querySelector(".count");
  const min = app.state ? app.state.min_samples : 0;
  node.textContent = plural(count, "sample") + (count < min ? ` · need ${min - count} more` : "");
  node.classList.toggle("low", count < min);
  if (app.kind !== "audio" && card.dataset.count !== String(count)) {
    card.dataset.count = String(count);
    scheduleThumbs(name);
  }
}

// ------------------------------------------------------------------ samples: thumbnails

const THUMBS_SHOWN = 12;        // the newest ones; "Show all" lists every sample
const thumbTimers = new Map();  // class name -> pending refresh (counts change 10x a second)

function scheduleThumbs(name) {
  clearTimeout(thumbTimers.get(name));
  thumbTimers.set(name, setTimeout(() => loadThumbs(name), 250));
}

async function loadThumbs(name) {
  if (!app.cards.has(name)) return;
  const result = await api("GET", `/api/samples?label=${encodeURIComponent(name)}`);
  const card = app.cards.get(name);
  if (result && card) renderThumbs(card, name, result.samples);
}

function renderThumbs(card, name, samples) {
  const list = card.querySelector(".thumbs");
  const all = card.dataset.all === "1";
  const shown = (all ? samples : samples.slice(-THUMBS_SHOWN)).reverse();  // newest first
  const existing = new Map([...list.children].map((item) => [item.dataset.id, item]));
  list.replaceChildren(...shown.map((s) => existing.get(String(s.id)) || thumbItem(name, s)));
  const more = card.querySelector("button.more");
  more.hidden = samples.length <= THUMBS_SHOWN;
  more.textContent = all ? "Show fewer" : `Show all ${samples.length}`;
}

function thumbItem(name, sample) {
  const img = el("img", { src: sample.thumbnail_url || `/api/samples/${sample.id}/thumbnail.jpg`,
                          alt: `Sample ${sample.id} of ${name}`, width: 48, height: 48,
                          loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "no-thumb", text: "?",
                                                                   title: "No thumbnail kept for this sample" })));
  const remove = el("button", { type: "button", class: "thumb-remove", text: "×",
                                title: "Remove this sample",
                                "aria-label": `Remove sample ${sample.id} of ${name}` });
  remove.addEventListener("click", async () => {
    remove.disabled = true;
    const state = await api("DELETE", `/api/samples/${sample.id}`);
    if (state) setState(state.state || state);
    else remove.disabled = false;
  });
  return el("li", { class: "thumb", "data-id": String(sample.id) }, img, remove);
}

function classCard(name) {
  const title = el("h3", { class: "class-name", text: name });
  const count = el("span", { class: "count", text: "" });
  const head = el("div", { class: "class-head" }, title, count);

  const audio = app.kind === "audio";
  if (audio && name === BACKGROUND) title.append(" ", el("span", { class: "tag", text: "background" }));
  const record = el("button", { type: "button", class: "record", text: "Hold to record",
                                "aria-pressed": "false",
                                "aria-label": `Hold to record ${name}` });
  const fileInput = el("input", { type: "file", multiple: true,
                                  accept: audio ? "audio/*,.wav,.flac,.ogg" : "image/*",
                                  class: "visually-hidden",
                                  "aria-label": `Add ${audio ? "audio" : "image"} files to ${name}` });
  const fileLabel = el("label", { class: "button secondary file-label" },
                       audio ? "Add clips" : "Add images", fileInput);
  const undo = el("button", { type: "button", class: "ghost undo", text: "Undo last",
                              "aria-label": `Remove the last sample of ${name}` });
  const rename = el("button", { type: "button", class: "ghost", text: "Rename",
                                "aria-label": `Rename ${name}` });
  const remove = el("button", { type: "button", class: "ghost danger", text: "Remove",
                                "aria-label": `Remove ${name} and its samples` });
  const actions = el("div", { class: "class-actions" }, record, fileLabel, undo, rename, remove);
  if (audio) {  // a fixed-length recording after a countdown (the background: several clips)
    const seconds = name === BACKGROUND ? BACKGROUND_SECONDS : clipSeconds();
    const timed = el("button", { type: "button", class: "record timed",
                                 text: name === BACKGROUND ? `Record ${seconds} s of background` : `Record ${seconds} s`,
                                 "aria-label": `Record ${seconds} s of ${name}` });
    timed.dataset.label = timed.textContent;
    timed.addEventListener("click", () => timedClip(name, timed, seconds));
    actions.insertBefore(timed, fileLabel);
  }
  const thumbs = el("ul", { class: "thumbs", "aria-label": `Samples of ${name}, newest first` });
  const more = el("button", { type: "button", class: "ghost more", hidden: true });
  const card = el("li", { class: "class-card", "data-name": name }, head, actions);
  if (!audio) {
    card.append(thumbs, more);
    more.addEventListener("click", () => {
      card.dataset.all = card.dataset.all === "1" ? "0" : "1";
      loadThumbs(name);
    });
  }

  // hold to record: pointer (mouse, touch, pen) and keyboard (Space or Enter held down)
  record.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    record.focus();
    if (record.setPointerCapture) record.setPointerCapture(event.pointerId);
    startRecording(name, record);
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    record.addEventListener(type, () => stopRecording());
  }
  record.addEventListener("keydown", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    if (!event.repeat) startRecording(name, record);
  });
  record.addEventListener("keyup", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    stopRecording();
  });
  record.addEventListener("blur", () => stopRecording());
  record.addEventListener("click", (event) => event.preventDefault());
  record.addEventListener("contextmenu", (event) => event.preventDefault());

  fileInput.addEventListener("change", () => {
    const files = [...fileInput.files];
    fileInput.value = "";
    uploadFiles(name, files);
  });
  card.addEventListener("dragover", (event) => { event.preventDefault(); card.classList.add("dragover"); });
  card.addEventListener("dragleave", () => card.classList.remove("dragover"));
  card.addEventListener("drop", (event) => {
    event.preventDefault();
    card.classList.remove("dragover");
    uploadFiles(name, [...event.dataTransfer.files]);
  });

  undo.addEventListener("click", async () => {
    const result = await api("DELETE", `/api/samples/last?label=${encodeURIComponent(name)}`);
    if (result) setState(result.state);
  });
  rename.addEventListener("click", () => startRename(card, name, head, actions));
  let disarm = null;
  remove.addEventListener("click", async () => {
    if (!remove.classList.contains("armed")) {
      remove.classList.add("armed");
      remove.textContent = "Confirm remove";
      remove.setAttribute("aria-label", `Confirm: remove ${name} and its samples`);
      disarm = setTimeout(() => {
        remove.classList.remove("armed");
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove ${name} and its samples`);
      }, 4000);
      return;
    }
    clearTimeout(disarm);
    const result = await api("DELETE", `/api/classes?name=${encodeURIComponent(name)}`);
    if (result) setState(result);
  });
  return card;
}

function startRename(card, name, head, actions) {
  const input = el("input", { value: name, maxLength: 200, required: true,
                              "aria-label": `New name for ${name}` });
  const save = el("button", { type: "submit", text: "Save" });
  const cancel = el("button", { type: "button", class: "secondary", text: "Cancel" });
  const form = el("form", { class: "rename-form" }, input, save, cancel);
  const close = () => { form.remove(); head.hidden = false; actions.hidden = false; };
  cancel.addEventListener("click", () => { close(); card.querySelector(".record").focus(); });
  input.addEventListener("keydown", (event) => { if (event.key === "Escape") cancel.click(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const next = input.value.trim();
    if (!next || next === name) { close(); return; }
    const result = await api("PATCH", `/api/classes?name=${encodeURIComponent(name)}`, { name: next });
    if (result) { close(); setState(result); }
  });
  head.hidden = true;
  actions.hidden = true;
  card.prepend(form);
  input.focus();
  input.select();
}

// A photo larger than this (either side) is downscaled in the browser before it is sent:
// the model sees 224 pixels, and the server refuses photos over 40 megapixels.
const MAX_SIDE = 1024;
const MAX_BYTES = 2 * 1024 * 1024;

async function downscaled(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    return file;  // the browser cannot decode it: the server says what is wrong with it
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  if (scale === 1 && file.size <= MAX_BYTES) { bitmap.close(); return file; }
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  return blob ? new File([blob], file.name, { type: "image/jpeg" }) : file;
}

async function uploadFiles(label, files) {
  const audio = app.kind === "audio";
  const chosen = files.filter(audio ? isAudio : isImage);
  const skipped = files.filter((f) => !chosen.includes(f)).map((f) => `${f.name}: not ${audio ? "an audio" : "an image"} file`);
  if (!chosen.length) { toast(`Those are not ${audio ? "audio" : "image"} files.`, true); return; }
  const noun = audio ? "clip" : "image";
  let added = 0;
  const failed = [...skipped];
  let batch = [];
  let size = 0;
  const flush = async () => {
    if (!batch.length) return;
    const form = new FormData();
    form.append("label", label);
    for (const file of batch) form.append("files", file, file.name);
    toast(`Adding ${plural(batch.length, noun)} to ${label}…`);
    const names = batch.map((f) => f.name);
    // one toast at the end names every file not added and why (quiet: none from api())
    const result = await api("POST", "/api/samples", form, { quiet: true });
    batch = [];
    size = 0;
    const refused = (result.files || []).filter((file) => file.error).map((file) => file.error);
    failed.push(...refused);
    if (result.failed) {
      if (!refused.length) failed.push(`${names.join(", ")}: ${result.failed}`);
      return;
    }
    added += result.added;
    setState(result.state);
  };
  for (const original of chosen) {
    const file = audio ? original : await downscaled(original);
    if (size + file.size > UPLOAD_CHUNK_BYTES) await flush();
    batch.push(file);
    size += file.size;
  }
  await flush();
  const total = chosen.length + skipped.length;
  if (!failed.length) toast(`Added ${plural(added, noun)} to ${label}.`);
  else toast(`Added ${added} of ${plural(total, noun)} to ${label}. Not added: ${failed.join("; ")}`, true);
}

$("add-class").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("new-class");
  const name = input.value.trim();
  if (!name) return;
  const result = await api("POST", "/api/classes", { name });
  if (result) {
    input.value = "";
    setState(result);
  }
});

// ------------------------------------------------------------------ recording

function canRecord() {
  return app.kind === "audio" ? app.mic === "on" : app.camera === "on";
}

function startRecording(label, button) {
  if (app.kind === "audio") startClip(label, button, null);
  else startCameraRecording(label, button);
}

function stopRecording() {
  if (app.kind === "audio") { if (app.audio.clip && !app.audio.clip.limit) finishClip(); return; }
  stopCameraRecording();
}
