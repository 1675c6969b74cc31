// edgetune teachable camera: plain JavaScript, no framework, no network beyond this server.
"use strict";

(() => {
  const FRAME_SIZE = 224;          // the model's input: a square center crop of the camera
  const FRAME_INTERVAL_MS = 100;   // at most 10 frames a second (and 10 samples while recording)
  const JPEG_QUALITY = 0.85;
  const UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024;  // the server accepts 20 MB per request
  const PALETTE = ["#1d4ed8", "#d92d20", "#067647", "#b54708", "#7a5af8", "#0e7490",
                   "#c11574", "#4d7c0f", "#9a3412", "#475467"];

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
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

  const app = {
    state: null,
    ws: null,
    retry: 0,
    inFlight: false,
    sentAt: 0,
    camera: "starting",     // starting | on | denied | missing | insecure | error
    recording: null,        // the class being recorded
    points: [],             // the loss curve: [epoch, loss]
    run: null,
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
  const PREROLL_SECONDS = 0.25;
  const MIN_CLIP_SECONDS = 0.3;
  const MAX_HOLD_SECONDS = 10;
  const BACKGROUND = "none";         // the background class (noise, silence, other words)
  const BACKGROUND_SECONDS = 6;      // one background recording, cut into clips
  const COUNTDOWN_STEPS = 3;
  const COUNTDOWN_MS = 700;

  // ------------------------------------------------------------------ helpers

  let toastTimer = null;
  function toast(message, isError = false) {
    const box = $("toast");
    box.textContent = message;
    box.classList.toggle("error", isError);
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, isError ? 7000 : 3500);
  }

  async function api(method, url, body) {
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
      toast("The edgetune server is not reachable. Is it still running?", true);
      return null;
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      toast((data && data.error) || `${response.status} ${response.statusText}`, true);
      return null;
    }
    return data;
  }

  const colorOf = (name) => {
    const names = app.state ? app.state.classes.map((c) => c.name) : [];
    const index = Math.max(0, names.indexOf(name));
    return PALETTE[index % PALETTE.length];
  };
  const percent = (x) => `${(100 * x).toFixed(x >= 0.995 || x < 0.005 ? 0 : 1)}%`;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const isAudio = (file) => file.type.startsWith("audio/") || /\.(wav|flac|ogg|oga|opus)$/i.test(file.name);
  const isImage = (file) => file.type.startsWith("image/") ||
    /\.(jpe?g|png|gif|webp|bmp|tiff?|ppm|pgm)$/i.test(file.name);

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

  function send(message) {
    if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(JSON.stringify(message));
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
        drawLoss();
        break;
      case "progress":
        addPoints(message);
        break;
      case "training_done":
        finishRun(message.run);
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

  function setState(state) {
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

  function renderStatus() {
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

  function renderTraining() {
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
    download.setAttribute("aria-disabled", state.trained ? "false" : "true");
    download.tabIndex = state.trained ? 0 : -1;
    $("download-hint").hidden = state.trained;
    if (state.last_error && !state.training) $("train-log").textContent = `Training failed: ${state.last_error}`;
  }

  // ------------------------------------------------------------------ classes

  function renderClasses() {
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

  function updateCount(name, count) {
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
    if (app.kind === "audio") { startClip(label, button, null); return; }
    if (app.camera !== "on") {
      toast("No camera: add image files to the class instead.", true);
      return;
    }
    if (app.recording === label) return;
    if (app.recording) stopRecording();
    app.recording = label;
    send({ type: "record", label });
    button.setAttribute("aria-pressed", "true");
    button.textContent = "Recording…";
    $("viewport").classList.add("recording");
    const badge = $("recording-badge");
    badge.textContent = `● Recording ${label}`;
    badge.hidden = false;
  }

  function stopRecording() {
    if (app.kind === "audio") { if (app.audio.clip && !app.audio.clip.limit) finishClip(); return; }
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

  // ------------------------------------------------------------------ camera

  const video = $("video");
  const grab = document.createElement("canvas");
  grab.width = FRAME_SIZE;
  grab.height = FRAME_SIZE;
  const grabContext = grab.getContext("2d");

  const CAMERA_TEXT = {
    starting: "Starting the camera…",
    on: "Camera on. The square is what the model sees.",
    denied: "No camera permission. Allow the camera for this page in the browser's site settings and reload — or use image files: Add images on each class, then Predict an image file.",
    missing: "No camera found. Use image files instead: Add images on each class, then Predict an image file.",
    insecure: "The browser allows the camera only on https or on this device (http://127.0.0.1). Use image files instead: Add images on each class, then Predict an image file.",
    error: "The camera could not start. Use image files instead: Add images on each class, then Predict an image file.",
  };

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

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setCamera(window.isSecureContext ? "missing" : "insecure");
      return;
    }
    setCamera("starting");
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
      });
      video.srcObject = stream;
      try { await video.play(); } catch (e) { /* autoplay: muted video plays anyway */ }
      setCamera("on");
      stream.getVideoTracks().forEach((track) => track.addEventListener("ended", () => setCamera("missing")));
    } catch (e) {
      const name = e && e.name;
      if (name === "NotAllowedError" || name === "SecurityError") setCamera("denied");
      else if (name === "NotFoundError" || name === "OverconstrainedError" || name === "NotReadableError") setCamera("missing", name);
      else setCamera("error", name || String(e));
    }
  }

  function tick() {
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

  // ------------------------------------------------------------------ microphone (audio bundles)

  function startMedia(kind) {
    if (app.kind) return;
    app.kind = kind;
    document.body.dataset.kind = kind;
    if (kind !== "audio") { startCamera(); return; }
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

  const clipSeconds = () => (app.state && app.state.input && app.state.input.seconds) || 1.5;

  const MIC_TEXT = {
    starting: "Starting the microphone…",
    on: "Microphone on",
    denied: "No microphone permission. Allow the microphone for this page in the browser's site settings and reload — or use Add clips on each class.",
    missing: "No microphone found. Use audio files instead: Add clips on each class, then Predict an audio file.",
    insecure: "The browser allows the microphone only on https or on this device (http://127.0.0.1). Use audio files instead.",
    error: "The microphone could not start. Use audio files instead: Add clips on each class.",
  };

  function setMic(mode, detail) {
    app.mic = mode;
    $("mic-state").textContent = MIC_TEXT[mode] + (detail ? ` ${mode === "on" ? "·" : "—"} ${detail}` : "");
    $("file-test").classList.toggle("emphasis", mode !== "on" && mode !== "starting");
    renderListen();
    if (app.state) renderClasses();
  }

  async function startMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioContext) {
      setMic(window.isSecureContext ? "missing" : "insecure");
      return;
    }
    setMic("starting");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        video: false,
      });
    } catch (e) {
      const name = e && e.name;
      if (name === "NotAllowedError" || name === "SecurityError") setMic("denied");
      else if (name === "NotFoundError" || name === "OverconstrainedError" || name === "NotReadableError") setMic("missing", name);
      else setMic("error", name || String(e));
      return;
    }
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

  function startClip(label, button, seconds, split = 1) {
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

  async function timedClip(label, button, seconds) {
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

  async function finishClip() {
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

  function sendListen(on) {
    if (on) {
      app.audio.listening = "pending";  // chunks wait until the server has a detector
      send({ type: "listen", rate: app.audio.rate });
    } else {
      send({ type: "listen", rate: null });
    }
  }

  function setListening(on) {
    app.audio.listening = on;
    renderListen();
  }

  function renderListen() {
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

  function onListening(message) {
    if (message.rate === null || message.rate === undefined) return;
    if (app.audio.listening !== "pending") { sendListen(false); return; }  // stopped meanwhile
    setListening(true);
    $("prediction-source").textContent = `Listening · windows of ${message.window} s every ${message.hop} s` +
      (message.background ? "" : ` · no background class (${BACKGROUND}) yet`);
  }

  function onScores(message) {
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

  // ------------------------------------------------------------------ prediction

  function renderPrediction(result, from) {
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

  function renderBarsFromState() {
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

  function renderBars(scores, best) {
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

  // ------------------------------------------------------------------ training

  $("epochs").addEventListener("input", () => { $("epochs").dataset.edited = "1"; });
  $("train").addEventListener("click", async () => {
    const typed = parseInt($("epochs").value, 10);
    $("train").disabled = true;  // no number typed: the server's default
    const body = Number.isFinite(typed) ? { epochs: Math.max(1, Math.min(10000, typed)) } : {};
    const state = await api("POST", "/api/train", body);
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

  function addPoints(message) {
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

  function finishRun(run) {
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

  function drawLoss() {
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

  // ------------------------------------------------------------------ start

  drawLoss();
  api("GET", "/api/state").then((state) => {
    if (state && !app.state) setState(state);
    else if (!state && !app.kind) startMedia("image");
  });
  connect();
  tick();
})();
