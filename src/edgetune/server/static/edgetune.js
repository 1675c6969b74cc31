// edgetune.js: personalize an edgetune bundle in the browser tab with onnxruntime-web
// (the wasm backend, files served by `edgetune serve` under /static/ort/). It mirrors
// the Python Personalizer (src/edgetune/runtime/personalizer.py):
//
//   import { Personalizer } from "/static/edgetune.js";
//   const p = await Personalizer.open("/bundle/", { profile: "default" });
//   await p.addSample(video, "mug");    // HTMLVideoElement, canvas, ImageBitmap, ImageData, Blob
//   await p.addSample(pcm, "yes", { sampleRate: 48000 });  // audio bundles: Float32Array, AudioBuffer
//   await p.addSample("a text", "food"); // text bundles: strings
//   p.counts();                          // {mug: 1}
//   await p.predict(video);              // {label, scores, source}: prototypes, then the head
//   await p.predict(video, { openSet: true });  // "unknown" far from every class (openset.js)
//   await p.fit({ epochs: 20, onEpoch: (record) => {} });  // in a Web Worker
//   await p.removeSample(id); await p.renameClass("mug", "cup"); await p.removeClass("cup");
//   await p.exportOnnx();                // Uint8Array: one standalone model
//
// It reads only the manifest contract (docs/bundle-format.md), checks every file's
// sha256 before use, caches each sample's features (never the image; a 64-pixel
// thumbnail for the page) and keeps the profile in IndexedDB (edgetune/store.js).
// Nothing leaves the tab after the bundle's download.

import { ClassColumns, classMeans, classSums, prototypeScores } from "./edgetune/columns.js";
import { composeStandalone } from "./edgetune/export.js";
import { EdgetuneError, fetchVerified, openBundle, parseSafetensors, product } from "./edgetune/manifest.js";
import { checkNames, loadOrt, ORT_URL, session } from "./edgetune/ort.js";
import { thumbnail } from "./edgetune/image.js";
import { inputKind } from "./edgetune/inputs.js";
import { calibrate, comparable, judgeAll } from "./edgetune/openset.js";
import { ProfileStore } from "./edgetune/store.js";

export { EdgetuneError } from "./edgetune/manifest.js";

export const EPOCHS = 100; // an upper bound: training stops early on a plateau
const MAX_CLASS_NAME = 200;
const BASE_BATCH = 4;

/** The canonical form of a class name (edgetune.names.class_name). */
export function className(name) {
  if (typeof name !== "string") throw new EdgetuneError(`class names must be strings; got ${typeof name}`, "bad_input");
  const out = name.trim();
  if (!out) throw new EdgetuneError("class name is empty; give the class a name, e.g. 'mug'", "bad_input");
  if (out.length > MAX_CLASS_NAME) {
    throw new EdgetuneError(`class name is ${out.length} characters long; use at most ${MAX_CLASS_NAME}`, "bad_input");
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(out)) throw new EdgetuneError(`class name ${JSON.stringify(out)} contains control characters`, "bad_input");
  return out;
}

/** Column names after the renames [[from, to], ...] made since (in order). */
const renamed = (columns, renames) => columns.map((c) => renames.reduce((n, [from, to]) => (n === from ? to : n), c));

const copyValues = (values) => Object.fromEntries(
  Object.entries(values).map(([k, t]) => [k, { data: Float32Array.from(t.data), dims: [...t.dims] }]));

export class Personalizer {
  /**
   * Open (or create) `profile` in this browser for the bundle at `url` (a folder URL:
   * manifest.json and the files it names). Options: profile ("default"), threads (wasm
   * threads for the base and prediction; more than 1 needs a cross-origin isolated
   * page), precision ("fp32", or "int8" for bundles with base_int8), database (the
   * IndexedDB name, "edgetune"), ortUrl (onnxruntime-web's ESM file), tokenizersUrl
   * (@huggingface/tokenizers' ESM file, for text bundles), openSet (answer "unknown":
   * true/false recorded in the profile; default: the profile's choice, off), base
   * (false: no base graph is loaded, a head only: addFeatures, predictFeatures, fit).
   */
  static async open(url, options = {}) {
    const p = new Personalizer();
    await p._open(url, options);
    return p;
  }

  /** Delete a profile from this browser (its samples, classes and checkpoint). */
  static async removeProfile(name, { database } = {}) {
    await ProfileStore.remove(name, database);
  }

  async _open(url, options) {
    const profile = options.profile ?? "default";
    this.precision = options.precision ?? "fp32";
    this.ortUrl = options.ortUrl ?? ORT_URL;
    this.threads = options.threads ?? (globalThis.crossOriginIsolated ? Math.min(2, navigator.hardwareConcurrency || 1) : 1);
    this.bundle = await openBundle(url);
    const m = this.manifest = this.bundle.manifest;
    this.baseRole = this.precision === "int8" ? "base_int8" : "base";
    if (!m.graphs[this.baseRole]) {
      throw new EdgetuneError(`precision ${this.precision}: the bundle has no graph ${this.baseRole} `
        + "(convert it with --quantize)", "bad_input");
    }
    this.ort = await loadOrt({ url: this.ortUrl, threads: this.threads });
    this.featuresShape = m.features.shape;
    this.F = product(this.featuresShape);
    const input = m.input ?? {};
    this.input = input;
    this.inputShape = input.shape ?? [null, 224, 224, 3];
    const init = parseSafetensors(await fetchVerified(this.bundle, m.init, "init"), "init");
    for (const param of m.params) {
      if (!init[param.name]) throw new EdgetuneError(`init has no value for parameter ${param.name}`, "bad_bundle");
    }
    this.columnsOf = new ClassColumns(m, init);
    this._graphs = {};
    this.hasBase = options.base ?? true; // false: a head only (addFeatures, predictFeatures, fit)
    for (const role of this.hasBase ? [this.baseRole, "infer"] : ["infer"]) {
      this._graphs[role] = await fetchVerified(this.bundle, m.graphs[role], `graphs.${role}`);
    }
    if (this.hasBase) {
      this._base = await session(this.ort, this._graphs[this.baseRole], `graph ${this.baseRole}`);
      checkNames(this._base, m.graphs[this.baseRole], this.baseRole);
      this.kind = await inputKind(this.bundle, m.graphs[this.baseRole], options);
    }
    this._infer = await session(this.ort, this._graphs.infer, "graph infer");
    checkNames(this._infer, m.graphs.infer, "infer", m.params.map((q) => q.infer_input));

    const { store, profile: row, samples, checkpoint } = await ProfileStore.open(profile, this.bundle.id, options.database);
    this.store = store;
    this.profile = profile;
    this._classes = [...row.classes];
    this._samples = samples.map((s) => ({ ...s, features: new Float32Array(s.features) }));
    this._sumsStale = true;
    if (checkpoint) {
      this._values = this.columnsOf.remap(checkpoint.values, checkpoint.columns, this._classes);
      this._trained = Boolean(checkpoint.trained);
      this.step = checkpoint.step ?? 0;
    } else {
      this._values = this.columnsOf.fresh(this._classes.length);
      this._trained = false;
      this.step = 0;
    }
    this._columns = [...this._classes];
    this._fitting = null; // {worker, columns} while a fit runs
    this._worker = null;
    this.history = [];
    this._openSet = Boolean(row.openSet);
    if (options.openSet !== undefined) await this.setOpenSet(options.openSet);
    this._publish();
  }

  // -- open set (edgetune/openset.js) --

  /** Whether predict() answers "unknown" unless told otherwise (setOpenSet). */
  get openSet() { return this._openSet; }

  /** Make open-set answers the profile's default (recorded in IndexedDB) or not. */
  async setOpenSet(on) {
    this._openSet = Boolean(on);
    await this.store.setFields({ openSet: this._openSet });
  }

  /** The calibrated threshold of each class (null: background, no samples, too few samples). */
  openSetThresholds() {
    return { ...this._calibration().thresholds };
  }

  /** Class sums and prototypes of the current samples. */
  _prototypes() {
    if (this._sumsStale) {
      const { X, y } = this._data();
      const { Z, F } = this._comparable(X, y.length);
      const { sums, counts } = classSums(Z, y, this._classes.length, F);
      this._sums = { sums, counts, classes: [...this._classes], F, Z, y,
        means: classMeans(sums, this._classes.length, F), calibration: null };
      this._sumsStale = false;
    }
    return this._sums;
  }

  /** The open-set calibration of the current samples, computed when first asked (as
   * Python's OpenSet.calibration): a prototype answer does not need it. */
  _calibration() {
    const sums = this._prototypes();
    sums.calibration ??= calibrate(sums.Z, sums.y, sums.classes, sums.F);
    return sums.calibration;
  }

  /** Features as the rows prototypes and the open set compare (prototypes.comparable). */
  _comparable(X, n) {
    return comparable(X, n, this.featuresShape, this.manifest.features.layout);
  }

  _publish() {
    const params = {};
    for (const q of this.manifest.params) params[q.infer_input] = this._values[q.train_input];
    this._snapshot = { params, classes: [...this._columns], trained: this._trained };
  }

  // -- classes and samples --

  /** Samples per class, in class order (classes without samples count 0). */
  counts() {
    const out = Object.fromEntries(this._classes.map((c) => [c, 0]));
    for (const s of this._samples) out[s.label] += 1;
    return out;
  }

  classes() { return [...this._classes]; }

  /** The stored samples: [{id, label, created, thumbnail (a JPEG Blob)}], without features. */
  samples() {
    return this._samples.map(({ id, label, created, thumbnail: t }) => ({ id, label, created, thumbnail: t }));
  }

  /** Whether predictions come from a trained head (else from class prototypes). */
  get trained() { return this._snapshot.trained; }

  get isTraining() { return this._fitting !== null; }

  /**
   * The base's features of one source of the bundle's kind: {features: Float32Array [F],
   * and pixels (image), pcm (audio: the base's row) or truncated (text)}. options:
   * sampleRate (of a Float32Array; default the bundle's), silenceDb, maxClipped (audio).
   */
  async features(source, options = {}) {
    this._needBase();
    const { row, ...prepared } = await this.kind.prepare(source, options);
    return { ...prepared, features: await this.baseFeatures(row, 1) };
  }

  /** The base's input row of one source (what Python's preparer.prepare gives). */
  async prepare(source, options = {}) {
    this._needBase();
    return (await this.kind.prepare(source, options)).row;
  }

  _needBase() {
    if (!this.hasBase) throw new EdgetuneError("opened with {base: false}: use addFeatures and predictFeatures", "no_base");
  }

  /** The base on rows already shaped as its input, laid end to end: Float32Array [n * F]. */
  async baseFeatures(rows, n) {
    this._needBase();
    const graph = this.manifest.graphs[this.baseRole];
    const width = this.kind.rowLength;
    const out = new Float32Array(n * this.F);
    for (let from = 0; from < n; from += BASE_BATCH) {
      const count = Math.min(BASE_BATCH, n - from);
      const feeds = this.kind.feeds(this.ort, rows.subarray(from * width, (from + count) * width), count);
      const result = (await this._base.run(feeds))[graph.outputs.features];
      out.set(result.data, from * this.F);
    }
    for (const v of out) {
      if (!Number.isFinite(v)) throw new EdgetuneError("the base produced non-finite features for this input", "bad_input");
    }
    return out;
  }

  /** Add one sample of class `label` (options: as features()); its id. */
  async addSample(source, label, options = {}) {
    label = className(label);
    return this.addPrepared(await this.features(source, options), label);
  }

  /** Add what features(source) gave (so a frame that is also predicted runs the base once). */
  async addPrepared({ features, pixels }, label) {
    label = className(label);
    const [, height, width] = this.inputShape;
    const thumb = pixels ? await thumbnail(pixels, width, height) : null;
    return (await this._add([features], [label], [thumb]))[0];
  }

  /** Add samples whose features (the base's output, [n * F] flat) are known. */
  async addFeatures(features, labels) {
    labels = labels.map(className);
    const n = labels.length;
    if (features.length !== n * this.F) {
      throw new EdgetuneError(`features of length ${features.length} do not match ${n} labels of ${this.F} features`, "bad_input");
    }
    const rows = labels.map((_, i) => Float32Array.from(features.subarray(i * this.F, (i + 1) * this.F)));
    return this._add(rows, labels, labels.map(() => null));
  }

  async _add(rows, labels, thumbs) {
    const classes = [...this._classes];
    for (const label of labels) if (!classes.includes(label)) classes.push(label);
    const created = Date.now();
    const records = rows.map((features, i) => ({ label: labels[i], features: features.buffer, thumbnail: thumbs[i], created }));
    const ids = await this.store.addSamples(records, classes);
    ids.forEach((id, i) => this._samples.push({ ...records[i], id, features: rows[i] }));
    this._classes = classes;
    this._changed();
    return ids;
  }

  async addClass(name) {
    name = className(name);
    if (this._classes.includes(name)) return;
    await this.store.setClasses([...this._classes, name]);
    this._classes.push(name);
    this._changed();
  }

  async removeSample(id) {
    await this.store.removeSample(id);
    this._samples = this._samples.filter((s) => s.id !== id);
    this._changed();
  }

  async removeClass(name) {
    name = className(name);
    if (!this._classes.includes(name)) throw new EdgetuneError(`no class ${JSON.stringify(name)}`, "not_found");
    const classes = this._classes.filter((c) => c !== name);
    await this.store.changeClass(name, null, classes);
    this._samples = this._samples.filter((s) => s.label !== name);
    this._classes = classes;
    this._changed();
  }

  /** Rename a class; its samples and its trained column are kept. */
  async renameClass(from, to) {
    from = className(from);
    to = className(to);
    if (!this._classes.includes(from)) throw new EdgetuneError(`no class ${JSON.stringify(from)}`, "not_found");
    if (from === to) return;
    if (this._classes.includes(to)) throw new EdgetuneError(`a class ${JSON.stringify(to)} exists already`, "exists");
    const classes = this._classes.map((c) => (c === from ? to : c));
    await this.store.changeClass(from, to, classes);
    for (const s of this._samples) if (s.label === from) s.label = to;
    this._classes = classes;
    this._columns = this._columns.map((c) => (c === from ? to : c));
    this._fitting?.renames.push([from, to]);
    this._publish();
    this._changed();
  }

  /** After samples or classes changed: columns follow the classes; a running fit hears of it. */
  _changed() {
    this._sumsStale = true;
    if (this._columns.join("\u0000") !== this._classes.join("\u0000")) {
      const fresh = this._classes.map((c, i) => (this._columns.includes(c) ? -1 : i)).filter((i) => i >= 0);
      const values = this.columnsOf.remap(this._values, this._columns, this._classes);
      if (this._trained && fresh.length) {
        const { X, y } = this._data();
        this.columnsOf.imprint(values, X, y, fresh);
      }
      this._values = values;
      this._columns = [...this._classes];
      this._publish();
    }
    if (this._fitting) {
      const { X, y } = this._data();
      this._fitting.worker.postMessage({ type: "samples", X, y, columns: [...this._classes],
        renames: this._fitting.renames });
    }
  }

  /** The stored samples: {X: Float32Array [n * F], y: Int32Array [n] (indices into classes), classes}. */
  trainingData() {
    return { ...this._data(), classes: [...this._classes] };
  }

  /** All samples' features [n * F] and label indices [n]. */
  _data() {
    const n = this._samples.length;
    const X = new Float32Array(n * this.F);
    const y = new Int32Array(n);
    this._samples.forEach((s, i) => {
      X.set(s.features, i * this.F);
      y[i] = this._classes.indexOf(s.label);
    });
    return { X, y };
  }

  // -- prediction --

  /**
   * {label, scores: {class: score}, source: "head" | "prototypes"} for one source (text:
   * also truncated). options: as features(), and openSet (default: the profile's
   * choice): also unknown, class, distance, threshold; far from the class picked the
   * label is "unknown" (or "none" in a profile with the background class "none").
   */
  async predict(source, options = {}) {
    const { features, truncated } = await this.features(source, options);
    const [answer] = await this.predictFeatures(features, 1, options);
    return truncated === undefined ? answer : { ...answer, truncated };
  }

  async predictFeatures(features, n = 1, { openSet } = {}) {
    const snap = this._snapshot; // one consistent parameter set, whatever training does meanwhile
    if (!snap.classes.length) throw new EdgetuneError("no classes yet: add samples before predicting", "bad_input");
    let scores;
    let source;
    let rows = null; // the features as prototypes and the open set compare them, made once
    const comparableRows = () => (rows ??= this._comparable(features, n));
    const C = snap.classes.length;
    if (snap.trained) {
      const graph = this.manifest.graphs.infer;
      const feeds = { [graph.inputs.features]: new this.ort.Tensor("float32", features, [n, ...this.featuresShape]) };
      for (const [name, t] of Object.entries(snap.params)) feeds[name] = new this.ort.Tensor("float32", t.data, t.dims);
      scores = (await this._infer.run(feeds, [graph.outputs.probabilities]))[graph.outputs.probabilities].data;
      source = "head";
    } else {
      this._prototypes();
      const { Z, F } = comparableRows();
      const all = prototypeScores(Z, n, this._sums.sums, this._sums.counts, F);
      const k = this._sums.classes.length;
      scores = new Float32Array(n * C);
      for (let r = 0; r < n; r++) {
        for (let c = 0; c < C; c++) {
          const j = this._sums.classes.indexOf(snap.classes[c]);
          scores[r * C + c] = j >= 0 ? all[r * k + j] : 0;
        }
      }
      source = "prototypes";
    }
    const out = [];
    for (let r = 0; r < n; r++) {
      const row = Array.from(scores.subarray(r * C, (r + 1) * C));
      const best = row.indexOf(Math.max(...row));
      out.push({ label: snap.classes[best], source, scores: Object.fromEntries(snap.classes.map((c, i) => [c, row[i]])) });
    }
    if (openSet ?? this._openSet) {
      const { classes, means } = this._prototypes();
      const { Z, F } = comparableRows();
      return judgeAll(Z, F, out, classes, means, this._calibration());
    }
    return out;
  }

  // -- training --

  async _trainingWorker() {
    if (this._worker) return this._worker;
    const graphs = {};
    for (const role of ["train", "train_epoch", "infer"]) {
      if (!this.manifest.graphs[role]) continue;
      graphs[role] = role === "infer" ? this._graphs.infer
        : await fetchVerified(this.bundle, this.manifest.graphs[role], `graphs.${role}`);
    }
    const worker = new Worker(new URL("./edgetune/worker.js", import.meta.url), { type: "module" });
    await new Promise((resolve, reject) => {
      worker.onmessage = (e) => (e.data.type === "ready" ? resolve()
        : reject(new EdgetuneError(e.data.message, e.data.code)));
      worker.onerror = (e) => reject(new EdgetuneError(`the training worker failed: ${e.message}`, "worker"));
      worker.postMessage({ type: "init", manifest: this.manifest, graphs, ortUrl: this.ortUrl, threads: 1 });
    });
    this._worker = worker;
    return worker;
  }

  /**
   * Train in a Web Worker for up to `epochs` epochs; predict() keeps answering from the
   * last good parameters. Options as Personalizer.fit in Python: batchSize, lr (default:
   * the manifest's), balanced, earlyStop, patience, minDelta; onEpoch(record) per record;
   * seed (the shuffle) or orders (each epoch's row order, for reproducing a run).
   * Resolves with the records; the last is {event: "kept", ...}.
   */
  async fit(options = {}) {
    if (this._fitting) throw new EdgetuneError("training is already running; stop() first", "busy");
    const epochs = options.epochs ?? EPOCHS;
    if (!Number.isInteger(epochs) || epochs < 1 || epochs > 1_000_000) {
      throw new EdgetuneError(`epochs is ${epochs}; it must be a whole number from 1 to 1000000, e.g. 30`, "bad_input");
    }
    const batchSize = options.batchSize ?? null;
    if (batchSize !== null && !(Number.isInteger(batchSize) && batchSize >= 1)) {
      throw new EdgetuneError(`batch size is ${batchSize}; it must be a whole number of at least 1, e.g. 32`, "bad_input");
    }
    const suggested = this.manifest.optimizer?.lr;
    const lr = options.lr ?? (typeof suggested === "number" && suggested > 0 ? suggested : 0.01);
    if (!(Number.isFinite(lr) && lr > 0)) {
      throw new EdgetuneError(`learning rate is ${lr}; it must be a finite number above 0, e.g. 0.001`, "bad_input");
    }
    if (!this._samples.length) throw new EdgetuneError("no samples yet: add at least one sample before training", "bad_input");
    const worker = await this._trainingWorker();
    const { X, y } = this._data();
    let values = this._values;
    if (!this._trained) { // start a linear head's columns at the class means
      values = copyValues(values);
      this.columnsOf.imprint(values, X, y, this._classes.map((_, i) => i));
    }
    const fitting = this._fitting = { worker, renames: [] };
    const records = await new Promise((resolve, reject) => {
      worker.onmessage = (e) => {
        const msg = e.data;
        if (msg.type === "record") {
          this.history.push(msg.record);
          options.onEpoch?.(msg.record);
        } else if (msg.type === "accept") {
          this._accept(msg.values, msg.step, msg.columns).catch(reject);
        } else if (msg.type === "done") resolve(msg.records);
        else if (msg.type === "error") reject(new EdgetuneError(msg.message, msg.code));
      };
      worker.onerror = (e) => reject(new EdgetuneError(`the training worker failed: ${e.message}`, "worker"));
      worker.postMessage({ type: "fit", X, y, columns: [...this._columns], values, step: this.step, lr,
        options: { epochs, batchSize, balanced: options.balanced ?? true, earlyStop: options.earlyStop ?? true,
          patience: options.patience, minDelta: options.minDelta, seed: options.seed ?? 0, orders: options.orders } });
    }).finally(() => { if (this._fitting === fitting) this._fitting = null; });
    await this._saving;
    return records;
  }

  /** Publish and save a good epoch's parameters, unless the classes changed meanwhile. */
  async _accept(values, step, columns) {
    const names = renamed(columns, this._fitting?.renames ?? []);
    if (names.join("\u0000") !== this._columns.join("\u0000")) return;
    this._values = values;
    this.step = step;
    this._trained = true;
    this._publish();
    this._saving = (this._saving ?? Promise.resolve()).then(() => this.save());
    await this._saving;
  }

  /** Ask a running fit to stop after the current epoch. */
  stop() {
    this._fitting?.worker.postMessage({ type: "stop" });
  }

  /** Write the parameters, optimizer state, step and class columns (one IndexedDB record). */
  async save() {
    await this.store.saveCheckpoint({ columns: [...this._columns], trained: this._trained, step: this.step,
      values: copyValues(this._values) });
  }

  // -- export --

  /**
   * One standalone ONNX model: the base's raw input in, `probabilities` (and `logits`)
   * out, the trained head's parameters inside, class names in the metadata
   * (`edgetune.classes`): what `edgetune export` writes.
   */
  async exportOnnx() {
    const snap = this._snapshot;
    if (!snap.trained) throw new EdgetuneError("nothing trained yet: fit() before exporting", "not_trained");
    this._needBase();
    const m = this.manifest;
    const model = composeStandalone(this._graphs[this.baseRole], this._graphs.infer,
      m.graphs[this.baseRole].outputs.features, m.graphs.infer.inputs.features, snap.params, {
        "edgetune.classes": JSON.stringify(snap.classes),
        "edgetune.input": JSON.stringify(this.input),
        "edgetune.bundle": this.bundle.id,
        "edgetune.precision": this.precision,
      });
    return model;
  }

  /** Stop training and let the profile go (the worker, the sessions, the database connection). */
  close() {
    this.stop();
    this._worker?.terminate();
    this._worker = null;
    this._fitting = null;
    for (const s of [this._base, this._infer]) s?.release().catch(() => {});
    this._base = this._infer = null;
    this.store?.close();
  }
}
