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
  const card = el("li", { class: "class-card", "data-name": name }, head, actions);

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

async function uploadFiles(label, files) {
  const audio = app.kind === "audio";
  const images = files.filter(audio ? isAudio : isImage);
  if (!images.length) { toast(`Those are not ${audio ? "audio" : "image"} files.`, true); return; }
  let added = 0;
  let batch = [];
  let size = 0;
  const flush = async () => {
    if (!batch.length) return true;
    const form = new FormData();
    form.append("label", label);
    for (const file of batch) form.append("files", file, file.name);
    toast(`Adding ${plural(batch.length, audio ? "clip" : "image")} to ${label}…`);
    const result = await api("POST", "/api/samples", form);
    batch = [];
    size = 0;
    if (!result) return false;
    added += result.added;
    setState(result.state);
    return true;
  };
  for (const file of images) {
    if (size + file.size > UPLOAD_CHUNK_BYTES && !(await flush())) return;
    batch.push(file);
    size += file.size;
  }
  if (await flush()) toast(`Added ${plural(added, audio ? "clip" : "image")} to ${label}.`);
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
