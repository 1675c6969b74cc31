// The page's backend when it runs in the tab (the default): the same requests and
// messages as the server's API and WebSocket, answered here by edgetune.js, so camera
// frames, samples and training never leave the browser. The server only serves the
// page, the bundle (/bundle/) and onnxruntime-web (/static/ort/).
//
// Audio bundles too: recorded clips are added in the tab, and listening runs the
// detector here (listen.js) on the microphone's chunks, which the page hands to this
// backend instead of a WebSocket.
//
// `?mode=server` keeps the server mode (frames over the WebSocket); so does a browser
// without WebAssembly, a text bundle, or a server without onnxruntime-web (no npm when it
// was installed), and the page says why.

import { heldOutAccuracy } from "./heldout.js";
import { BACKGROUND, Detector } from "./listen.js";
import { $, app, toast } from "./ui.js";

const FRAME_INTERVAL_MS = 100; // at most 10 predictions a second, as in server mode
const PROFILE = "default";
const PROGRESS_MS = 50; // between progress messages (session.py's PROGRESS_INTERVAL)

/** "tab" or "server", and why when the tab cannot be used. */
export async function chooseBackend() {
  const asked = new URLSearchParams(location.search).get("mode");
  if (asked === "server") return { mode: "server", why: "server mode (?mode=server)" };
  if (typeof WebAssembly !== "object") return { mode: "server", why: "this browser has no WebAssembly" };
  let head;
  try {
    head = await fetch("/static/ort/ort.wasm.min.mjs", { method: "HEAD", cache: "no-cache" });
  } catch (e) {
    return { mode: "server", why: "the server is not reachable" };
  }
  if (!head.ok) {
    return { mode: "server", why: "onnxruntime-web is not installed on the server (install npm, then make run)" };
  }
  const manifest = await fetch("/bundle/manifest.json", { cache: "no-cache" }).then((r) => (r.ok ? r.json() : null)).catch(() => null);
  const kind = manifest?.input?.kind ?? "image";
  if (!manifest) return { mode: "server", why: "the server does not serve its bundle" };
  if (kind !== "image" && kind !== "audio") return { mode: "server", why: `${kind} bundles run on the server`, quiet: true };
  return { mode: "tab" };
}

const isWav = (file) => /\.wav$/i.test(file.name || "") || /^audio\/(x-)?wav/.test(file.type || "");

/** An audio file as edgetune.js takes it: WAV as it is (read exactly, any rate), other
 * formats (FLAC, OGG, ...) decoded by the browser at the bundle's rate. */
async function audioOf(file, rate) {
  if (isWav(file)) return file;
  const context = new OfflineAudioContext(1, 1, rate);
  try {
    return await context.decodeAudioData(await file.arrayBuffer());
  } catch (e) {
    throw new Error(`the file is not audio this browser can decode (${e.message || e})`);
  }
}

/** GET /api/samples in the tab: each sample's thumbnail as a blob: URL (`thumbnail_url`;
 * the server's is /api/samples/ID/thumbnail.jpg), made once per sample. */
function samplesOf(p, urls) {
  return p.samples().map((s) => {
    if (s.thumbnail && !urls.has(s.id)) urls.set(s.id, URL.createObjectURL(s.thumbnail));
    return { id: s.id, label: s.label, created_at: s.created / 1000, source: "tab",
      thumbnail_url: urls.get(s.id) ?? null };
  });
}

/** One tab at a time holds the profile (as the Python profile's lock: one writer): a
 * second tab of the page in this browser waits, saying so, and takes over when the first
 * one closes (then it reads the samples and the head the first one left). */
async function holdProfile() {
  if (!navigator.locks) return;
  let waiting = null;
  await new Promise((held) => {
    navigator.locks.request(`edgetune.profile.${PROFILE}`, () => {
      held();
      return new Promise(() => {}); // kept while the page lives
    });
    waiting = setTimeout(() => {
      const pill = $("status");
      pill.textContent = "Open in another tab";
      pill.dataset.state = "offline";
      toast("This page is open in another tab of this browser, which holds your samples and model. "
        + "Use that tab, or close it: this one takes over then.", true);
    }, 500);
  });
  clearTimeout(waiting);
}

/** The tab's backend: `api(method, url, body)` like the server's, messages to `handle`. */
export class TabBackend {
  constructor(p, defaults, handle) {
    this.p = p;
    this.handle = handle;
    this.minSamples = defaults.min_samples ?? 3;
    this.defaultEpochs = defaults.default_epochs ?? 100;
    // the advanced settings' defaults and bounds: the server's (the same bundle), with
    // the learning rate edgetune.js uses when told none (the manifest's)
    const lr = p.manifest.optimizer?.lr;
    this.settings = { epochs: this.defaultEpochs, batch_size: 32, early_stop: true, max_epochs: 10000,
      max_batch_size: 4096, ...defaults.settings, ...(typeof lr === "number" && lr > 0 ? { lr } : {}) };
    this.run = null;
    this.runs = 0;
    this.trainedOn = JSON.parse(localStorage.getItem(`edgetune.trainedOn.${PROFILE}`) || "null");
    this.busy = false;
    this.thumbUrls = new Map();
  }

  static async start(handle) {
    await holdProfile();
    const { Personalizer } = await import("./edgetune.js");
    const defaults = await fetch("/api/state", { credentials: "same-origin" }).then((r) => r.json());
    const p = await Personalizer.open("/bundle/", { profile: PROFILE });
    return new TabBackend(p, defaults, handle);
  }

  readiness(counts) {
    const names = Object.keys(counts);
    if (names.length < 2) return names.length ? "Add at least two classes." : "Add a class for each thing to tell apart (at least two).";
    const short = names.filter((n) => counts[n] < this.minSamples).map((n) => `${n} (${counts[n]})`);
    if (short.length) return `Record at least ${this.minSamples} samples for every class; too few: ${short.join(", ")}.`;
    return null;
  }

  state() {
    const counts = this.p.counts();
    const reason = this.readiness(counts);
    const trained = this.p.trained;
    const record = trained ? this.trainedOn : null;
    const ids = this.p.samples().map((s) => s.id).join(",");
    const stale = Boolean(record && (JSON.stringify(record.counts) !== JSON.stringify(counts) || record.ids !== ids));
    return { type: "state", mode: "tab", input: this.inputInfo(),
      classes: Object.entries(counts).map(([name, count]) => ({ name, count })),
      samples: Object.values(counts).reduce((a, b) => a + b, 0), min_samples: this.minSamples,
      default_epochs: this.defaultEpochs, settings: this.settings, ready: reason === null, reason,
      training: this.p.isTraining,
      trained, stale, untrained: record ? Object.keys(counts).filter((c) => !(c in record.counts)) : [],
      run: this.run, last_error: this.run?.error ?? null };
  }

  broadcast() { this.handle(this.state()); }

  /** A renamed class keeps its place in what the head was trained on (not "new"), and
   * its held-out accuracy. */
  renamed(from, to) {
    const rename = (object) => Object.fromEntries(Object.entries(object)
      .map(([name, value]) => [name === from ? to.trim() : name, value]));
    const report = this.run?.evaluation;
    if (report && from in report.per_class) report.per_class = rename(report.per_class);
    const record = this.trainedOn;
    if (!record || !(from in record.counts)) return;
    this.trainedOn = { ...record, counts: rename(record.counts) };
    localStorage.setItem(`edgetune.trainedOn.${PROFILE}`, JSON.stringify(this.trainedOn));
  }

  /** What the page needs to know about inputs (as the server's Studio.input). */
  inputInfo() {
    const { kind, sampleRate, samples } = this.p.kind;
    if (kind !== "audio") return { kind };
    return { kind, sample_rate: sampleRate, samples, seconds: samples / sampleRate };
  }

  /** A source of the bundle's kind from a file (audio: audioOf). */
  async sourceOf(file) {
    const { kind, sampleRate } = this.p.kind;
    return kind === "audio" ? audioOf(file, sampleRate) : file;
  }

  /** The server's endpoints, answered in the tab (errors as ui.js's api() answers them). */
  async api(method, url, body, { quiet = false } = {}) {
    try {
      return await this.route(method, new URL(url, location.href), body);
    } catch (error) {
      const message = error.message || String(error);
      if (quiet) return { failed: message };
      toast(message, true);
      return null;
    }
  }

  async route(method, url, body) {
    const path = url.pathname;
    const q = url.searchParams;
    const p = this.p;
    if (path === "/api/state" && method === "GET") return this.state();
    if (path === "/api/classes") {
      if (method === "POST") await p.addClass(body.name);
      else if (method === "PATCH") {
        await p.renameClass(q.get("name"), body.name);
        this.renamed(q.get("name"), body.name);
      }
      else if (method === "DELETE") await p.removeClass(q.get("name"));
      this.broadcast();
      return this.state();
    }
    if (path === "/api/samples" && method === "GET") {
      const wanted = q.get("label");
      return { samples: samplesOf(p, this.thumbUrls).filter((s) => wanted === null || s.label === wanted) };
    }
    if (path === "/api/samples" && method === "POST") return this.addFiles(body);
    if (path === "/api/samples/last" && method === "DELETE") {
      const ids = p.samples().filter((s) => s.label === q.get("label")).map((s) => s.id);
      if (!ids.length) throw new Error(`class ${JSON.stringify(q.get("label"))} has no samples`);
      await p.removeSample(ids[ids.length - 1]);
      this.broadcast();
      return { removed: ids[ids.length - 1], state: this.state() };
    }
    const one = path.match(/^\/api\/samples\/(\d+)$/);
    if (one && method === "DELETE") {
      await p.removeSample(Number(one[1]));
      this.broadcast();
      return this.state();
    }
    if (path === "/api/predict" && method === "POST") {
      const file = body instanceof FormData ? body.get("image") : body;
      const t0 = performance.now();
      return { type: "prediction", ...(await p.predict(await this.sourceOf(file))), ms: performance.now() - t0 };
    }
    if (path === "/api/train" && method === "POST") return this.train(body || {});
    if (path === "/api/train/stop" && method === "POST") {
      p.stop();
      return this.state();
    }
    throw new Error(`${method} ${path} is not available when the page runs in the tab (?mode=server has it)`);
  }

  async addFiles(form) {
    const label = form.get("label");
    const files = form.getAll("files");
    const result = [];
    for (const file of files) {
      try {
        const id = await this.p.addSample(await this.sourceOf(file), label);
        result.push({ file: file.name, id });
      } catch (error) {
        result.push({ file: file.name, error: `${file.name}: ${error.message || error}` });
      }
    }
    const failed = result.filter((r) => r.error); // classes.js names them, in one toast
    this.broadcast();
    return { added: result.length - failed.length, files: result, state: this.state() };
  }

  train(body) {
    if (this.p.isTraining) throw new Error("training is already running");
    const epochs = body.epochs ?? this.defaultEpochs;
    const settings = { batch_size: body.batch_size ?? null, lr: body.lr ?? null, early_stop: body.early_stop ?? true };
    const counts = this.p.counts();
    const ids = this.p.samples().map((s) => s.id).join(",");
    const run = this.run = { run: ++this.runs, epochs, settings, points: [], events: [], done: false,
      error: null, evaluation: null };
    const remember = () => { // what the head was trained on: kept at its first improvement, so a
      this.trainedOn = { counts, ids }; // reload mid-run still knows what is new since
      localStorage.setItem(`edgetune.trainedOn.${PROFILE}`, JSON.stringify(this.trainedOn));
    };
    let remembered = false;
    // progress at most every PROGRESS_MS (a small head trains thousands of epochs a
    // second; the page redraws the curve per message), as the server sends it
    let pending = [];
    let timer = null;
    const flush = () => {
      clearTimeout(timer);
      timer = null;
      if (!pending.length) return;
      const [epoch, loss] = pending[pending.length - 1];
      this.handle({ type: "progress", run: run.run, replace: false, points: pending, epoch, loss,
        events: run.events.slice(-3) });
      pending = [];
    };
    this.handle({ type: "training_started", run: run.run, epochs });
    this.p.fit({ epochs, batchSize: settings.batch_size ?? undefined, lr: settings.lr ?? undefined,
      earlyStop: settings.early_stop,
      onEpoch: (record) => {
        if (record.event) {
          if (record.message) run.events.push({ event: record.event, message: record.message });
          return;
        }
        if (!remembered && record.improved !== false) { remembered = true; remember(); }
        run.points.push([record.epoch, record.loss]);
        pending.push([record.epoch, record.loss]);
        timer ??= setTimeout(flush, PROGRESS_MS);
      } })
      .then((records) => {
        if (records.at(-1)?.improved || this.p.trained) remember();
      })
      .catch((error) => { run.error = error.message || String(error); })
      .finally(() => {
        flush();
        run.done = true;
        this.handle({ type: "training_done", run });
        this.broadcast();
        if (!run.error) this.evaluate(run);
      });
    return { ...this.state(), training: true };
  }

  /** Per-class accuracy on held-out samples after a run (heldout.js), as the server does. */
  // One at a time (they share the throwaway profile); a run already followed by another
  // one is not evaluated.
  evaluate(run) {
    this.evaluating = (this.evaluating ?? Promise.resolve()).then(async () => {
      if (this.run !== run || this.p.isTraining) return;
      try {
        run.evaluation = await heldOutAccuracy(this.p, { epochs: run.epochs, lr: run.settings.lr,
          batchSize: run.settings.batch_size, earlyStop: run.settings.early_stop });
      } catch (error) {
        console.warn("held-out evaluation failed:", error);
        run.evaluation = null;
      }
      this.handle({ type: "evaluation", run: run.run, evaluation: run.evaluation });
    });
    return this.evaluating;
  }

  /** What the page would send over the WebSocket: listen on/off (JSON), audio chunks. */
  message(data) {
    if (typeof data !== "string") { this.hear(new Float32Array(data)); return; }
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (msg.type === "listen") this.listen(msg.rate);
  }

  /** Start (rate: Hz of the chunks) or stop (rate: null) listening, as live.py answers. */
  async listen(rate) {
    const old = this.detector;
    this.detector = null;
    const found = old && !old.busy ? await old.flush() : []; // the last, padded window
    if (rate === null || rate === undefined) {
      this.handle({ type: "listening", rate: null, detections: found });
      return;
    }
    if (!this.p.samples().length) {
      this.handle({ type: "error", message: "no samples yet: record some words first" });
      return;
    }
    const d = this.detector = new Detector(this.p, { rate });
    this.handle({ type: "listening", rate, sample_rate: d.rate, window: d.window / d.rate, hop: d.hop / d.rate,
      threshold: d.threshold, detections: found, background: this.p.classes().includes(BACKGROUND[0]) });
  }

  /** A chunk of the microphone while listening: scores and detections when windows complete. */
  hear(chunk) {
    const d = this.detector;
    if (!d) return;
    d.take(chunk);
    if (d.busy) return; // the windows it completes are scored by the run in progress
    d.busy = true;
    const step = async () => {
      while (this.detector === d && d.lagging > 0) {
        const windows = d.windows;
        const found = await d.advance();
        if (d.windows === windows || this.detector !== d) break;
        const scores = d.scores;
        const keywords = Object.keys(scores).filter((c) => !d.background.has(c));
        const audio = d.samples / d.rate;
        this.handle({ type: "scores", scores, detections: found, time: audio, windows: d.windows,
          label: keywords.length ? keywords.reduce((a, b) => (scores[b] > scores[a] ? b : a)) : null,
          real_time_factor: audio ? d.computeSeconds / audio : 0 });
      }
    };
    step().catch((error) => this.handle({ type: "error", message: error.message || String(error) }))
      .finally(() => { d.busy = false; });
  }

  /** Frames from the camera: a sample while a class is recorded, a prediction after. */
  async frame(video) {
    if (this.busy || app.camera !== "on" || document.hidden || video.readyState < 2) return;
    const recording = app.recording;
    const counts = this.p.counts();
    if (!recording && !Object.values(counts).some((n) => n > 0)) return;
    this.busy = true;
    try {
      const t0 = performance.now();
      const prepared = await this.p.features(video); // the base once for both
      if (recording && recording in counts) {
        await this.p.addPrepared(prepared, recording);
        this.handle({ type: "recorded", label: recording, count: this.p.counts()[recording] });
        this.broadcast();
      }
      const [result] = await this.p.predictFeatures(prepared.features, 1);
      this.handle({ type: "prediction", ...result, ms: performance.now() - t0 });
    } catch (error) {
      this.handle({ type: "error", message: error.message || String(error) });
    } finally {
      this.busy = false;
    }
  }

  /** Download: the model exported in the tab. */
  async download() {
    const bytes = await this.p.exportOnnx();
    const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "edgetune-personal.onnx";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }
}

/** Run the page in the tab: `handle` gets the messages the WebSocket would bring. */
export async function startTab(handle) {
  const backend = await TabBackend.start(handle);
  app.tab = backend;
  // "connected": the backend is in this tab; what the page sends it (listening) goes there
  app.ws = { readyState: 1, bufferedAmount: 0, send: (data) => backend.message(data) };
  const video = $("video");
  const loop = () => {
    backend.frame(video).finally(() => setTimeout(loop, FRAME_INTERVAL_MS));
  };
  if (backend.inputInfo().kind === "image") loop();
  $("download").addEventListener("click", (event) => {
    event.preventDefault();
    if ($("download").getAttribute("aria-disabled") === "true") return;
    backend.download().catch((error) => toast(error.message || String(error), true));
  }, true);
  document.body.dataset.mode = "tab";
  return backend;
}
