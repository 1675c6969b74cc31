// Predictions: the label, the confidence bars, and predicting a file (picked or dropped).

import { $, PALETTE, api, app, colorOf, el, isAudio, isImage, percent, toast } from "./ui.js";

export function renderPrediction(result, from) {
  const label = $("prediction");
  const source = $("prediction-source");
  if (!result.label) {
    label.textContent = "—";
    source.textContent = result.message || "";
    renderBars({});
    return;
  }
  const score = result.scores[result.label];
  label.textContent = result.label;
  label.style.color = colorOf(result.label);
  const how = result.source === "head" ? "trained model" : "closest class average (before training)";
  const where = from === "camera" ? "camera" : from;
  source.textContent = `${percent(score)} · ${how} · ${where}` +
    (result.ms !== undefined ? ` · ${Math.round(result.ms)} ms` : "");
  renderBars(result.scores, result.label);
}

export function renderBarsFromState() {
  if (!app.state) return;
  const names = app.state.classes.map((c) => c.name);
  for (const [name, bar] of app.bars) {
    if (!names.includes(name)) { bar.remove(); app.bars.delete(name); }
  }
  if (!app.state.samples) {
    $("prediction").textContent = "—";
    $("prediction").style.color = "";
    $("prediction-source").textContent = app.state.classes.length
      ? "Record or add samples to see predictions." : "Add classes and samples to see predictions.";
  }
}

export function renderBars(scores, best) {
  const list = $("bars");
  const names = app.state ? app.state.classes.map((c) => c.name) : Object.keys(scores);
  names.forEach((name, index) => {
    let bar = app.bars.get(name);
    if (!bar) {
      bar = el("li", { class: "bar" },
        el("span", { class: "name", text: name, title: name }),
        el("span", { class: "track", "aria-hidden": "true" }, el("span", { class: "fill" })),
        el("span", { class: "pct", text: "–" }));
      app.bars.set(name, bar);
    }
    if (list.children[index] !== bar) list.insertBefore(bar, list.children[index] || null);
    const value = scores[name];
    const known = typeof value === "number";
    bar.style.setProperty("--swatch", PALETTE[index % PALETTE.length]);
    bar.querySelector(".fill").style.width = known ? `${(100 * value).toFixed(1)}%` : "0";
    bar.querySelector(".pct").textContent = known ? percent(value) : "–";
    bar.classList.toggle("best", name === best);
    bar.setAttribute("aria-label", `${name}: ${known ? percent(value) : "no score"}`);
  });
}

async function predictFile(file) {
  if (!file) return;
  const audio = app.kind === "audio";
  if (!(audio ? isAudio(file) : isImage(file))) {
    toast(`${file.name} is not ${audio ? "an audio" : "an image"} file.`, true);
    return;
  }
  const figure = $("file-figure");
  const preview = $("file-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = audio;
  if (!audio) preview.src = URL.createObjectURL(file);
  $("file-caption").textContent = `${file.name}: predicting…`;
  figure.hidden = false;
  const form = new FormData();
  form.append("image", file, file.name);
  const result = await api("POST", "/api/predict", form);
  if (!result) { $("file-caption").textContent = `${file.name}: failed`; return; }
  app.filePredictionUntil = Date.now() + (app.camera === "on" || app.audio.listening ? 4000 : 1e12);
  renderPrediction(result, file.name);
  $("file-caption").textContent = result.label
    ? `${file.name}: ${result.label} (${percent(result.scores[result.label])})`
    : `${file.name}: ${result.message}`;
}

$("predict-file").addEventListener("change", () => {
  const input = $("predict-file");
  const file = input.files[0];
  input.value = "";
  predictFile(file);
});
const viewport = $("viewport");
viewport.addEventListener("dragover", (event) => { event.preventDefault(); viewport.classList.add("dragover"); });
viewport.addEventListener("dragleave", () => viewport.classList.remove("dragover"));
viewport.addEventListener("drop", (event) => {
  event.preventDefault();
  viewport.classList.remove("dragover");
  predictFile(event.dataTransfer.files[0]);
});
// a file dropped anywhere else must not make the browser navigate away
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
