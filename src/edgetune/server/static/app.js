// edgetune teachable camera or microphone: plain JavaScript modules, no framework, no
// network beyond this server. This one starts the page: the state from /api/state and the
// WebSocket, the status and training panel; the bundle's input kind picks the camera
// (camera.js) or the microphone (microphone.js).

import { startCamera, tick } from "./camera.js";
import { renderClasses, updateCount } from "./classes.js";
import { onListening, onScores, renderListen, sendListen, setListening,
         startAudioPage } from "./microphone.js";
import { renderBarsFromState, renderPrediction } from "./predict.js";
import { chooseBackend, startTab } from "./tab.js";
import { addPoints, drawLoss, finishRun, renderAccuracy, renderSettings } from "./training.js";
import { $, api, app, plural, send, toast } from "./ui.js";

// ------------------------------------------------------------------ connection

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    app.ws = ws;
    app.retry = 0;
    app.inFlight = false;
    if (app.recording) send({ type: "record", label: app.recording });
    if (app.audio.listening) sendListen(true);
    renderStatus();
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (e) { return; }
    handle(message);
  };
  ws.onclose = () => {
    if (app.ws === ws) app.ws = null;
    app.inFlight = false;
    renderStatus();
    const delay = Math.min(5000, 250 * 2 ** app.retry++);
    setTimeout(connect, delay);
  };
}

function handle(message) {
  switch (message.type) {
    case "state":
      setState(message);
      break;
    case "prediction":
      app.inFlight = false;
      if (Date.now() >= app.filePredictionUntil) renderPrediction(message, "camera");
      break;
    case "recorded":
      app.inFlight = false;
      updateCount(message.label, message.count);
      break;
    case "training_started":
      app.run = message.run;
      app.points = [];
      $("train-log").textContent = `Training for up to ${plural(message.epochs, "epoch")}…`;
      renderAccuracy(null);
      drawLoss();
      break;
    case "progress":
      addPoints(message);
      break;
    case "training_done":
      finishRun(message.run);
      break;
    case "evaluation":
      if (message.run === app.run) renderAccuracy(message.evaluation);
      break;
    case "listening":
      onListening(message);
      break;
    case "scores":
      onScores(message);
      break;
    case "error":
      if (message.frame !== undefined) app.inFlight = false;
      if (app.audio.listening === "pending") setListening(false);
      toast(message.message || "error", true);
      break;
    default:
      break;
  }
}

// ------------------------------------------------------------------ state

export function setState(state) {
  app.state = state;
  if (!app.kind) startMedia((state.input && state.input.kind) || "image");
  const epochsInput = $("epochs");
  if (state.default_epochs && !epochsInput.dataset.edited) {
    epochsInput.value = state.default_epochs;  // the server's default until the user types
  }
  if (state.run && state.run.points && (state.run.run !== app.run || !state.training)) {
    app.run = state.run.run;
    app.points = state.run.points.slice();
    drawLoss();
  }
  renderClasses();
  renderStatus();
  renderTraining();
  renderBarsFromState();
  if (app.kind === "audio") renderListen();
}

export function renderStatus() {
  const pill = $("status");
  const state = app.state;
  let text = "Connecting…";
  let kind = "connecting";
  if (!app.ws) {
    text = state ? "Offline · reconnecting…" : "Connecting…";
    kind = state ? "offline" : "connecting";
  } else if (!state) {
    text = "Connecting…";
  } else if (state.training) {
    const last = app.points[app.points.length - 1];
    text = last ? `Training · epoch ${last[0]}` : "Training…";
    kind = "training";
  } else if (state.trained && !state.stale) {
    text = "Trained";
    kind = "trained";
  } else if (state.trained) {
    text = "Trained · new samples";
    kind = "ready";
  } else if (!state.classes.length) {
    text = "No classes yet";
  } else if (state.ready) {
    text = "Ready to train";
    kind = "ready";
  } else {
    text = "Too few samples";
  }
  pill.textContent = text;
  pill.dataset.state = kind;
}

export function renderTraining() {
  const state = app.state;
  if (!state) return;
  const hint = $("train-hint");
  if (state.training) hint.textContent = "Training in the background: predictions keep running.";
  else if (!state.ready) hint.textContent = state.reason;
  else if (state.trained && state.stale) hint.textContent = "New samples since the last training: train again to include them.";
  else if (state.trained) hint.textContent = "Trained. Add samples and train again to improve it.";
  else hint.textContent = "Ready: press Train.";
  $("train").disabled = !state.ready || state.training;
  $("train").textContent = state.trained ? "Train again" : "Train";
  $("stop").hidden = !state.training;
  const download = $("download");
  const untrained = state.untrained || [];
  const ready = state.trained && !untrained.length;
  download.setAttribute("aria-disabled", ready ? "false" : "true");
  download.tabIndex = ready ? 0 : -1;
  $("download-hint").hidden = ready;
  $("download-hint").textContent = state.trained
    ? `Train again first: ${untrained.join(", ")} ${untrained.length === 1 ? "was" : "were"} added after training.`
    : "Train first to download the personalized model.";
  renderSettings();
  if (state.run && state.run.run === app.run) renderAccuracy(state.run.evaluation);
  if (state.last_error && !state.training) $("train-log").textContent = `Training failed: ${state.last_error}`;
}

function startMedia(kind) {
  if (app.kind) return;
  app.kind = kind;
  document.body.dataset.kind = kind;
  if (kind === "audio") startAudioPage();
  else startCamera();
}

// ------------------------------------------------------------------ start

drawLoss();
// In the tab by default (tab.js: edgetune.js answers the API, frames stay here); the
// server's WebSocket in server mode (?mode=server) or when the tab cannot run the model.
// api() calls wait for this (ui.js): nothing reaches the server while the tab starts.
let backend = null;
app.backendReady = (async () => {
  backend = await chooseBackend();
  if (backend.mode === "tab") {
    try {
      await startTab(handle);
    } catch (e) {
      Object.assign(backend, { mode: "server", why: e.message || String(e) });
    }
  }
})();
await app.backendReady;
if (backend.why && !backend.quiet && backend.mode === "server" && !backend.why.startsWith("server mode")) toast(`Server mode: ${backend.why}`, true);
api("GET", "/api/state").then((state) => {
  if (state && !app.state) setState(state);
  else if (!state && !app.kind) startMedia("image");
});
if (backend.mode === "server") {
  connect();
  tick();
}
