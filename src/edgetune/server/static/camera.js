// The camera (image bundles): the preview, its state, and frames over the WebSocket.

import { renderClasses } from "./classes.js";
import { $, app, deviceMessages, el, openDevice, send, toast } from "./ui.js";

const FRAME_SIZE = 224;          // the model's input: a square center crop of the camera
const FRAME_INTERVAL_MS = 100;   // at most 10 frames a second (and 10 samples while recording)
const JPEG_QUALITY = 0.85;

const video = $("video");
const grab = document.createElement("canvas");
grab.width = FRAME_SIZE;
grab.height = FRAME_SIZE;
const grabContext = grab.getContext("2d");

const CAMERA_TEXT = deviceMessages("camera", "Camera on. The square is what the model sees.",
                                   "image files", "Add images on each class, then Predict an image file");

function setCamera(mode, detail) {
  app.camera = mode;
  const overlay = $("camera-message");
  overlay.hidden = mode === "on";
  overlay.textContent = mode === "on" ? "" : (mode === "starting" ? CAMERA_TEXT.starting : "No camera — use image files");
  if (mode !== "on" && mode !== "starting") {
    const retry = el("button", { type: "button", class: "secondary", text: "Try the camera again" });
    retry.addEventListener("click", startCamera);
    overlay.replaceChildren(el("div", {}, el("p", { text: CAMERA_TEXT[mode] }), retry));
  }
  $("camera-state").textContent = CAMERA_TEXT[mode] + (detail ? ` (${detail})` : "");
  $("file-test").classList.toggle("emphasis", mode !== "on");
  if (app.state) renderClasses();
}

export async function startCamera() {
  const { stream, failed } = await openDevice(
    { video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false },
    { starting: () => setCamera("starting") });
  if (failed) { setCamera(...failed); return; }
  video.srcObject = stream;
  try { await video.play(); } catch (e) { /* autoplay: muted video plays anyway */ }
  setCamera("on");
  stream.getVideoTracks().forEach((track) => track.addEventListener("ended", () => setCamera("missing")));
}

export function startCameraRecording(label, button) {
  if (app.camera !== "on") {
    toast("No camera: add image files to the class instead.", true);
    return;
  }
  if (app.recording === label) return;
  if (app.recording) stopCameraRecording();
  app.recording = label;
  send({ type: "record", label });
  button.setAttribute("aria-pressed", "true");
  button.textContent = "Recording…";
  $("viewport").classList.add("recording");
  const badge = $("recording-badge");
  badge.textContent = `● Recording ${label}`;
  badge.hidden = false;
}

export function stopCameraRecording() {
  if (!app.recording) return;
  const card = app.cards.get(app.recording);
  app.recording = null;
  send({ type: "record", label: null });
  if (card) {
    const button = card.querySelector("button.record");
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Hold to record";
  }
  $("viewport").classList.remove("recording");
  $("recording-badge").hidden = true;
}

// one camera frame at a time to the server (a prediction, and a sample while recording)
export function tick() {
  setTimeout(tick, 25);
  const ws = app.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || app.camera !== "on" || document.hidden) return;
  const now = performance.now();
  if (app.inFlight && now - app.sentAt < 5000) return;  // one frame in flight at a time
  if (now - app.sentAt < FRAME_INTERVAL_MS) return;
  if (!app.recording && !(app.state && app.state.samples > 0)) return;
  if (video.readyState < 2 || !video.videoWidth) return;
  const side = Math.min(video.videoWidth, video.videoHeight);
  grabContext.drawImage(video, (video.videoWidth - side) / 2, (video.videoHeight - side) / 2,
                        side, side, 0, 0, FRAME_SIZE, FRAME_SIZE);
  // toDataURL encodes at once; toBlob may wait for the browser to be idle, which it
  // seldom is while a button is held down.
  const base64 = grab.toDataURL("image/jpeg", JPEG_QUALITY).split(",")[1];
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  app.inFlight = true;
  app.sentAt = now;
  ws.send(bytes.buffer);
}
