// Training: the Train and Stop buttons, the download link, the loss curve.

import { renderStatus, renderTraining, setState } from "./app.js";
import { $, api, app, colorOf, el, percent, plural } from "./ui.js";

// The settings as typed, checked here as the server checks them (edgetune.hyperparams):
// {body} for POST /api/train, or {error} naming the field and the range.
const WHOLE = /^\s*\d+\s*$/;
export function readSettings() {
  const limits = (app.state && app.state.settings) || { max_epochs: 10000, max_batch_size: 4096 };
  const body = {};
  const epochs = $("epochs").value.trim();
  if (epochs !== "") {
    const n = Number(epochs);
    if (!WHOLE.test(epochs) || n < 1 || n > limits.max_epochs) {
      return { error: `Epochs must be a whole number from 1 to ${limits.max_epochs} (got ${epochs}).`, field: "epochs" };
    }
    body.epochs = n;
  }
  const batch = $("batch-size").value.trim();
  if (batch !== "") {
    const n = Number(batch);
    if (!WHOLE.test(batch) || n < 1 || n > limits.max_batch_size) {
      return { error: `Batch size must be a whole number from 1 to ${limits.max_batch_size} (got ${batch}).`, field: "batch-size" };
    }
    body.batch_size = n;
  }
  const lr = $("lr").value.trim();
  if (lr !== "") {
    const x = Number(lr);
    if (!Number.isFinite(x) || x <= 0) {
      return { error: `Learning rate must be a number above 0, e.g. 0.01 (got ${lr}).`, field: "lr" };
    }
    body.lr = x;
  }
  body.early_stop = $("early-stop").checked;
  return { body };
}

function showSettingsError(result) {
  const box = $("settings-error");
  for (const id of ["epochs", "batch-size", "lr"]) {
    $(id).setAttribute("aria-invalid", result.field === id ? "true" : "false");
  }
  box.hidden = !result.error;
  box.textContent = result.error || "";
  if (result.field === "batch-size" || result.field === "lr") $("advanced").open = true;
  return !result.error;
}

export function renderSettings() {
  const defaults = app.state && app.state.settings;
  if (!defaults) return;
  for (const [id, value] of [["epochs", defaults.epochs], ["batch-size", defaults.batch_size], ["lr", defaults.lr]]) {
    const input = $(id);
    if (!input.dataset.edited) input.value = value;  // the server's default until the user types
  }
  $("epochs").max = defaults.max_epochs;
  $("batch-size").max = defaults.max_batch_size;
}

for (const id of ["epochs", "batch-size", "lr"]) {
  $(id).addEventListener("input", () => {
    $(id).dataset.edited = "1";
    if (!$("settings-error").hidden) showSettingsError(readSettings());
  });
}
$("reset-settings").addEventListener("click", () => {
  for (const id of ["epochs", "batch-size", "lr"]) delete $(id).dataset.edited;
  $("early-stop").checked = true;
  renderSettings();
  showSettingsError({});
});
$("train").addEventListener("click", async () => {
  const settings = readSettings();
  if (!showSettingsError(settings)) { $(settings.field).focus(); return; }
  $("train").disabled = true;
  const state = await api("POST", "/api/train", settings.body);
  if (state) setState(state);
  else if (app.state) renderTraining();
});
$("stop").addEventListener("click", async () => {
  const state = await api("POST", "/api/train/stop");
  if (state) setState(state);
});
$("download").addEventListener("click", (event) => {
  if ($("download").getAttribute("aria-disabled") === "true") event.preventDefault();
});

export function addPoints(message) {
  if (message.run !== app.run) { app.run = message.run; app.points = []; }
  if (message.replace) app.points = message.points.slice();
  else {
    const last = app.points.length ? app.points[app.points.length - 1][0] : -Infinity;
    for (const point of message.points) if (point[0] > last) app.points.push(point);
  }
  if (message.loss !== null && message.loss !== undefined) {
    $("train-log").textContent = `Epoch ${message.epoch} · loss ${Number(message.loss).toPrecision(3)}`;
  }
  drawLoss();
  renderStatus();
}

export function finishRun(run) {
  app.run = run.run;
  app.points = run.points.slice();
  drawLoss();
  const last = app.points[app.points.length - 1];
  const notes = run.events.map((e) => e.message).filter(Boolean);
  let text;
  if (run.error) text = `Training failed: ${run.error}`;
  else if (last) text = `Done: ${plural(last[0], "epoch")}, final loss ${Number(last[1]).toPrecision(3)}.`;
  else text = "Training stopped before the first epoch.";
  $("train-log").textContent = [text, ...notes].join(" ");
  renderAccuracy(run.evaluation);
}

// Per-class accuracy on held-out samples (a copy of the head trained on the
// rest after each run: holdout.py on the server, heldout.js in the tab); null hides it.
export function renderAccuracy(report) {
  const box = $("accuracy");
  box.hidden = !report;
  if (!report) return;
  const list = $("accuracy-list");
  list.replaceChildren();
  for (const [name, cls] of Object.entries(report.per_class)) {
    const known = cls.accuracy !== null && cls.accuracy !== undefined;
    const bar = el("li", { class: "bar", "data-name": name,
                           "aria-label": `${name}: ${known ? `${cls.correct} of ${cls.n} right` : "no held-out sample"}` },
      el("span", { class: "name", text: name, title: name }),
      el("span", { class: "track", "aria-hidden": "true" }, el("span", { class: "fill" })),
      el("span", { class: "pct", text: known ? `${cls.correct}/${cls.n}` : "–" }));
    bar.style.setProperty("--swatch", colorOf(name));
    bar.querySelector(".fill").style.width = known ? `${(100 * cls.accuracy).toFixed(1)}%` : "0";
    list.append(bar);
  }
  $("accuracy-note").textContent = `${percent(report.accuracy)} of ${plural(report.n, "held-out sample")} ` +
    `right, by a model trained the same way on the other ${plural(report.train, "sample")}.`;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function fmt(value) {
  if (value === 0) return "0";
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 1) return String(Number(value.toFixed(2)));
  if (Math.abs(value) >= 0.01) return String(Number(value.toPrecision(2)));
  return value.toExponential(1).replace("e-", "e−");
}

export function drawLoss() {
  const canvas = $("loss");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 560;
  const height = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "12px system-ui, sans-serif";
  const points = app.points.filter((p) => Number.isFinite(p[1]));
  if (!points.length) {
    ctx.fillStyle = "#667085";
    ctx.textAlign = "center";
    ctx.fillText("The loss curve appears here while training.", width / 2, height / 2);
    canvas.setAttribute("aria-label", "Training loss per epoch: no training yet");
    return;
  }
  const xMin = Math.min(0, points[0][0]);
  const xMax = Math.max(points[points.length - 1][0], xMin + 1);
  const yMax = niceMax(Math.max(...points.map((p) => p[1])));
  const labels = [0, 1, 2, 3, 4].map((i) => fmt((yMax * i) / 4));
  const labelWidth = Math.max(...labels.map((text) => ctx.measureText(text).width));
  const pad = { left: Math.ceil(labelWidth) + 26, right: 14, top: 12, bottom: 40 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (epoch) => pad.left + ((epoch - xMin) / (xMax - xMin)) * plotW;
  const y = (loss) => pad.top + (1 - loss / yMax) * plotH;

  ctx.strokeStyle = "#e4e7ec";
  ctx.fillStyle = "#667085";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const value = (yMax * i) / 4;
    const yy = Math.round(y(value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.left, yy);
    ctx.lineTo(width - pad.right, yy);
    ctx.stroke();
    ctx.fillText(labels[i], pad.left - 6, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const epoch = Math.round(xMin + ((xMax - xMin) * i) / ticks);
    ctx.fillText(String(epoch), x(epoch), height - pad.bottom + 5);
  }
  ctx.fillText("epoch", pad.left + plotW / 2, height - 16);
  ctx.save();
  ctx.translate(11, pad.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText("loss", 0, 0);
  ctx.restore();

  // the area under the curve, then the curve
  ctx.beginPath();
  ctx.moveTo(x(points[0][0]), y(0));
  for (const [epoch, loss] of points) ctx.lineTo(x(epoch), y(loss));
  ctx.lineTo(x(points[points.length - 1][0]), y(0));
  ctx.closePath();
  ctx.fillStyle = "rgba(29, 78, 216, 0.10)";
  ctx.fill();
  ctx.beginPath();
  points.forEach(([epoch, loss], i) => (i ? ctx.lineTo(x(epoch), y(loss)) : ctx.moveTo(x(epoch), y(loss))));
  ctx.strokeStyle = "#1d4ed8";
  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  ctx.stroke();
  const [lastEpoch, lastLoss] = points[points.length - 1];
  ctx.beginPath();
  ctx.arc(x(lastEpoch), y(lastLoss), 3.5, 0, 2 * Math.PI);
  ctx.fillStyle = "#1d4ed8";
  ctx.fill();
  canvas.setAttribute("aria-label", `Training loss per epoch: ${points.length} epochs, from ` +
    `${points[0][1].toPrecision(3)} to ${lastLoss.toPrecision(3)}`);
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(drawLoss, 100);
});
