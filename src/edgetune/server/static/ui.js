// Shared by every part of the page: the app's state, DOM and server helpers, formatting.

export const PALETTE = ["#1d4ed8", "#d92d20", "#067647", "#b54708", "#7a5af8", "#0e7490",
                        "#c11574", "#4d7c0f", "#9a3412", "#475467"];
export const BACKGROUND = "none";  // the background class of audio bundles (noise, silence, other words)

export const app = {
  state: null,
  ws: null,
  retry: 0,
  inFlight: false,
  sentAt: 0,
  camera: "starting",     // starting | on | denied | missing | insecure | error
  recording: null,        // the class being recorded
  points: [],             // the loss curve: [epoch, loss]
  run: null,
  backendReady: null,     // settles once the page knows where it runs (app.js)
  filePredictionUntil: 0, // a file's prediction stays on screen until then
  cards: new Map(),       // class name -> its <li>
  bars: new Map(),        // class name -> its bar <li>
  kind: null,             // the bundle's input kind: "image" (camera) or "audio" (microphone)
  mic: "off",             // off | starting | on | denied | missing | insecure | error
  audio: {
    ctx: null, rate: 0,   // the AudioContext and its sample rate
    preroll: [],          // the last PREROLL_SECONDS of chunks (a word starts before the press)
    clip: null,           // the clip being recorded: {label, chunks, length, limit, split}
    listening: false,     // false | "pending" (asked the server) | true
    heard: 0,             // detections shown
  },
};

export const $ = (id) => document.getElementById(id);
export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("aria-") || key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
};

let toastTimer = null;
export function toast(message, isError = false) {
  const box = $("toast");
  box.textContent = message;
  box.classList.toggle("error", isError);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, isError ? 7000 : 3500);
}

// A request to the server (or to tab.js when the page runs in the tab): the answer's
// JSON, or null after a toast saying what went wrong. quiet: no toast; a failure answers
// {failed: "what went wrong", ...the answer's other fields} for the caller to word.
export async function api(method, url, body, { quiet = false } = {}) {
  if (app.backendReady) await app.backendReady;  // the tab or the server: chosen at start (app.js)
  if (app.tab) return app.tab.api(method, url, body, { quiet });  // the page runs in the tab (tab.js)
  const fail = (message, data = null) => {
    if (quiet) return { ...(data || {}), failed: message };
    toast(message, true);
    return null;
  };
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    return fail("The edgetune server is not reachable. Is it still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) return fail((data && data.error) || `${response.status} ${response.statusText}`, data);
  return data;
}

export function send(message) {
  if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(JSON.stringify(message));
}

export const colorOf = (name) => {
  const names = app.state ? app.state.classes.map((c) => c.name) : [];
  const index = Math.max(0, names.indexOf(name));
  return PALETTE[index % PALETTE.length];
};
export const percent = (x) => `${(100 * x).toFixed(x >= 0.995 || x < 0.005 ? 0 : 1)}%`;
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
export const isAudio = (file) => file.type.startsWith("audio/") || /\.(wav|flac|ogg|oga|opus)$/i.test(file.name);
export const isImage = (file) => file.type.startsWith("image/") ||
  /\.(jpe?g|png|gif|webp|bmp|tiff?|ppm|pgm)$/i.test(file.name);
export const clipSeconds = () => (app.state && app.state.input && app.state.input.seconds) || 1.5;

// ------------------------------------------------------------------ camera and microphone

// What the page says in each mode of a device ("camera", "microphone"): `on` when it
// runs, else how to do without it (`files` and where to add them).
export function deviceMessages(device, on, files, fallback) {
  return {
    starting: `Starting the ${device}…`,
    on,
    denied: `No ${device} permission. Allow the ${device} for this page in the browser's site settings and reload — or use ${files}: ${fallback}.`,
    missing: `No ${device} found. Use ${files} instead: ${fallback}.`,
    insecure: `The browser allows the ${device} only on https or on this device (http://127.0.0.1). Use ${files} instead: ${fallback}.`,
    error: `The ${device} could not start. Use ${files} instead: ${fallback}.`,
  };
}

// getUserMedia as the page needs it: {stream}, or {failed: [mode, detail]} saying why
// not. `starting()` runs just before the browser is asked.
export async function openDevice(constraints, { supported = true, starting = () => {} } = {}) {
  if (!supported || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { failed: [window.isSecureContext ? "missing" : "insecure"] };
  }
  starting();
  try {
    return { stream: await navigator.mediaDevices.getUserMedia(constraints) };
  } catch (e) {
    const name = e && e.name;
    if (name === "NotAllowedError" || name === "SecurityError") return { failed: ["denied"] };
    if (name === "NotFoundError" || name === "OverconstrainedError" || name === "NotReadableError") {
      return { failed: ["missing", name] };
    }
    return { failed: ["error", name || String(e)] };
  }
}
