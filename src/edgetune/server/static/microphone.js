// The microphone (audio bundles): the level meter, recorded clips, and listening (live
// audio over the WebSocket into the server's detector, which answers scores and detections).

import { setState } from "./app.js";
import { renderClasses } from "./classes.js";
import { renderBars } from "./predict.js";
import { $, BACKGROUND, api, app, clipSeconds, colorOf, deviceMessages, el, openDevice, percent,
         plural, send, toast } from "./ui.js";

const PREROLL_SECONDS = 0.25;
const MIN_CLIP_SECONDS = 0.3;
const MAX_HOLD_SECONDS = 10;
const COUNTDOWN_STEPS = 3;
const COUNTDOWN_MS = 700;

// the page as a teachable microphone: its texts, and the microphone instead of the camera
export function startAudioPage() {
  document.title = "edgetune · teachable microphone";
  $("app-title").textContent = "Teachable microphone";
  $("camera-title").textContent = "Microphone";
  $("viewport").hidden = true;
  $("camera-state").hidden = true;
  $("mic").hidden = false;
  $("predict-title").textContent = "Confidence (live)";
  $("new-class").placeholder = "e.g. lights";
  $("predict-file").accept = "audio/*,.wav,.flac,.ogg";
  $("predict-file-label").textContent = "Predict an audio file…";
  $("predict-file-hint").textContent = "WAV, FLAC or OGG";
  $("file-preview").hidden = true;
  $("classes-empty").textContent = "No classes yet. Add one for each word to recognize, and the background class (none) for silence, room noise and other words.";
  $("record-help").replaceChildren(
    "Hold ", el("b", { text: "Hold to record" }), " while saying the word (mouse, touch, or Space/Enter held on the button), or press ",
    el("b", { text: `Record ${clipSeconds()} s` }), " and speak after the countdown. Record the background class from room noise. No microphone? Use ",
    el("b", { text: "Add clips" }), " (WAV, FLAC or OGG).");
  for (const card of app.cards.values()) card.remove();  // made before the kind was known
  app.cards.clear();
  if (app.state) renderClasses();
  startMicrophone();
}

const MIC_TEXT = deviceMessages("microphone", "Microphone on",
                                "audio files", "Add clips on each class, then Predict an audio file");

function setMic(mode, detail) {
  app.mic = mode;
  $("mic-state").textContent = MIC_TEXT[mode] + (detail ? ` ${mode === "on" ? "·" : "—"} ${detail}` : "");
  $("file-test").classList.toggle("emphasis", mode !== "on" && mode !== "starting");
  renderListen();
  if (app.state) renderClasses();
}

async function startMicrophone() {
  const { stream, failed } = await openDevice(
    { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: false },
    { supported: Boolean(window.AudioContext), starting: () => setMic("starting") });
  if (failed) { setMic(...failed); return; }
  try {
    const wanted = app.state && app.state.input && app.state.input.sample_rate;
    let ctx = null;
    let source = null;
    try {  // at the model's rate when the browser resamples for us; else the device's
      ctx = new AudioContext(wanted ? { sampleRate: wanted } : {});
      source = ctx.createMediaStreamSource(stream);
    } catch (e) {
      if (ctx) ctx.close();
      ctx = new AudioContext();
      source = ctx.createMediaStreamSource(stream);
    }
    const chunk = Math.round(ctx.sampleRate * 0.1);
    let node;
    if (ctx.audioWorklet) {
      await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
      node = new AudioWorkletNode(ctx, "edgetune-pcm", { processorOptions: { chunk } });
      node.port.onmessage = (event) => onPcm(event.data);
    } else {  // older browsers
      node = ctx.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = (event) => onPcm(new Float32Array(event.inputBuffer.getChannelData(0)));
    }
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(ctx.destination);
    app.audio.ctx = ctx;
    app.audio.rate = ctx.sampleRate;
    app.audio.stream = stream;
    stream.getAudioTracks().forEach((track) => track.addEventListener("ended", () => setMic("missing")));
    setMic("on", ctx.state === "suspended" ? "press any button to start it" : `${ctx.sampleRate} Hz`);
    if (ctx.state === "suspended") {
      ctx.addEventListener("statechange", () => { if (ctx.state === "running") setMic("on", `${ctx.sampleRate} Hz`); });
    }
  } catch (e) {
    setMic("error", (e && (e.message || e.name)) || String(e));
  }
}

function resumeAudio() {  // browsers start an AudioContext only after a user gesture
  const ctx = app.audio.ctx;
  if (ctx && ctx.state === "suspended") ctx.resume().catch(() => {});
}
for (const type of ["pointerdown", "keydown"]) window.addEventListener(type, resumeAudio, true);

function onPcm(chunk) {
  const audio = app.audio;
  let sum = 0;
  for (let i = 0; i < chunk.length; i++) sum += chunk[i] * chunk[i];
  const db = 10 * Math.log10(sum / Math.max(1, chunk.length) + 1e-12);
  const meter = document.querySelector(".level");
  const fill = $("level-fill");
  const level = Math.max(-60, Math.min(0, db));
  fill.style.width = `${((level + 60) / 60) * 100}%`;
  meter.setAttribute("aria-valuenow", String(Math.round(level)));

  const clip = audio.clip;
  if (clip && clip.recording) {
    clip.chunks.push(chunk);
    clip.length += chunk.length;
    if (clip.limit && clip.length >= clip.limit) finishClip();
    else if (!clip.limit && clip.length >= MAX_HOLD_SECONDS * audio.rate) finishClip();
  } else {
    audio.preroll.push(chunk);
    let kept = audio.preroll.reduce((n, c) => n + c.length, 0);
    while (audio.preroll.length > 1 && kept - audio.preroll[0].length >= PREROLL_SECONDS * audio.rate) {
      kept -= audio.preroll.shift().length;
    }
  }
  if (audio.listening === true && app.ws && app.ws.readyState === WebSocket.OPEN) {
    if (app.ws.bufferedAmount < 1 << 20) app.ws.send(chunk.buffer);
  }
}

function showClip(label, text) {
  const badge = $("mic-badge");
  badge.hidden = !label;
  badge.textContent = text || `● Recording ${label}`;
  $("mic").classList.toggle("recording", Boolean(label));
}

export function startClip(label, button, seconds, split = 1) {
  if (app.mic !== "on" || !app.audio.ctx) {
    toast("No microphone: add audio files to the class instead.", true);
    return;
  }
  if (app.audio.clip) return;
  resumeAudio();
  const rate = app.audio.rate;
  const preroll = seconds ? [] : app.audio.preroll.slice();  // a hold starts a little early
  app.audio.clip = {
    label, button, recording: true, split,
    chunks: preroll, length: preroll.reduce((n, c) => n + c.length, 0),
    limit: seconds ? Math.round(seconds * rate) : 0,
  };
  app.audio.preroll = [];
  button.setAttribute("aria-pressed", "true");
  button.textContent = "Recording…";
  showClip(label);
}

export async function timedClip(label, button, seconds) {
  if (app.audio.clip || button.classList.contains("counting")) return;
  if (app.mic !== "on") { toast("No microphone: add audio files to the class instead.", true); return; }
  resumeAudio();
  button.classList.add("counting");
  for (let i = COUNTDOWN_STEPS; i > 0; i--) {
    button.textContent = `${i}…`;
    showClip(label, label === BACKGROUND ? `Quiet, please: ${i}…` : `Say "${label}" in ${i}…`);
    await new Promise((resolve) => setTimeout(resolve, COUNTDOWN_MS));
  }
  button.classList.remove("counting");
  const split = label === BACKGROUND ? Math.max(1, Math.floor(seconds / clipSeconds())) : 1;
  startClip(label, button, seconds, split);
}

export async function finishClip() {
  const clip = app.audio.clip;
  if (!clip || !clip.recording) return;
  clip.recording = false;
  app.audio.clip = null;
  const button = clip.button;
  button.setAttribute("aria-pressed", "false");
  button.textContent = button.dataset.label || "Hold to record";
  showClip(null);
  const rate = app.audio.rate;
  const samples = new Float32Array(clip.length);
  let at = 0;
  for (const chunk of clip.chunks) { samples.set(chunk, at); at += chunk.length; }
  if (samples.length < MIN_CLIP_SECONDS * rate) {
    toast("Too short: hold the button while you say the word.", true);
    return;
  }
  const form = new FormData();
  form.append("label", clip.label);
  const part = Math.floor(samples.length / clip.split);
  for (let i = 0; i < clip.split; i++) {
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    form.append("files", wavBlob(samples.subarray(i * part, (i + 1) * part), rate), `mic-${stamp}-${i}.wav`);
  }
  const result = await api("POST", "/api/samples", form);
  if (result) {
    setState(result.state);
    toast(`Recorded ${plural(result.added, "clip")} of ${clip.label}.`);
  }
}

function wavBlob(samples, rate) {  // 16-bit PCM mono WAV
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, value) => { for (let i = 0; i < value.length; i++) view.setUint8(offset + i, value.charCodeAt(i)); };
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, Math.round(v * 32767), true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

// listening: microphone chunks over the WebSocket into the server's detector

export function sendListen(on) {
  if (on) {
    app.audio.listening = "pending";  // chunks wait until the server has a detector
    send({ type: "listen", rate: app.audio.rate });
  } else {
    send({ type: "listen", rate: null });
  }
}

export function setListening(on) {
  app.audio.listening = on;
  renderListen();
}

export function renderListen() {
  const button = $("listen");
  const listening = Boolean(app.audio.listening);
  const samples = app.state ? app.state.samples : 0;
  button.disabled = app.mic !== "on" || (!samples && !listening);
  button.textContent = listening ? "Stop listening" : "Listen";
  button.setAttribute("aria-pressed", listening ? "true" : "false");
  const background = app.state && app.state.classes.some((c) => c.name === BACKGROUND);
  let hint;
  if (listening) hint = "Listening: say a word.";
  else if (!samples) hint = "Record samples, then listen: each word the model knows shows up below.";
  else if (!background) hint = `Add the background class (${BACKGROUND}) and record room noise, or every sound is some word.`;
  else hint = app.state.trained ? "Press Listen and say a word." : "Train, then press Listen (it works before training too, less well).";
  $("listen-hint").textContent = hint;
}

$("listen").addEventListener("click", () => {
  resumeAudio();
  if (app.audio.listening) {
    sendListen(false);
    setListening(false);
  } else {
    sendListen(true);
    renderListen();
  }
});

$("add-background").addEventListener("click", async () => {
  const result = await api("POST", "/api/classes", { name: BACKGROUND });
  if (result) setState(result);
});

export function onListening(message) {
  if (message.rate === null || message.rate === undefined) return;
  if (app.audio.listening !== "pending") { sendListen(false); return; }  // stopped meanwhile
  setListening(true);
  $("prediction-source").textContent = `Listening · windows of ${message.window} s every ${message.hop} s` +
    (message.background ? "" : ` · no background class (${BACKGROUND}) yet`);
}

export function onScores(message) {
  if (app.audio.listening !== true) return;
  const scores = message.scores || {};
  const names = Object.keys(scores);
  if (names.length && Date.now() >= app.filePredictionUntil) {
    const best = names.reduce((a, b) => (scores[b] > scores[a] ? b : a));
    const label = $("prediction");
    label.textContent = best;
    label.style.color = colorOf(best);
    $("prediction-source").textContent = `${percent(scores[best])} · smoothed score · ` +
      `${message.time.toFixed(1)} s heard` +
      (message.real_time_factor ? ` · ${Math.round(100 * message.real_time_factor)}% of real time` : "");
    renderBars(scores, best);
  }
  for (const d of message.detections || []) addDetection(d);
}

function addDetection(d) {
  const list = $("detections");
  app.audio.heard += 1;
  const item = el("li", { class: "detection fresh", "data-label": d.label },
    el("span", { class: "word", text: d.label }),
    el("span", { class: "when", text: `${percent(d.score)} · ${d.start.toFixed(1)}–${d.end.toFixed(1)} s` }));
  item.style.setProperty("--swatch", colorOf(d.label));
  list.prepend(item);
  setTimeout(() => item.classList.remove("fresh"), 1500);
  while (list.children.length > 50) list.lastChild.remove();
  $("detections-empty").hidden = true;
}
