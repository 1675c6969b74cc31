// The training worker: runs the bundle's `train` / `train_epoch` graphs and the fit
// loop (fit.js) off the page's thread, so prediction and the page keep going.
//
// page -> worker: {type: "init", manifest, graphs: {role: bytes}, ortUrl, threads}
//                 {type: "fit", X, y, columns, values, step, lr, options}
//                 {type: "samples", X, y, columns}   samples or classes changed meanwhile
//                 {type: "stop"}
// worker -> page: {type: "ready"} | {type: "record", record}
//                 {type: "accept", values, step, columns}  better parameters (publish, save)
//                 {type: "done", records, values, step, columns} | {type: "error", message}

import { ClassColumns } from "./columns.js";
import { fitEpochs, makeProbe, mulberry32, permutation } from "./fit.js";
import { product } from "./manifest.js";
import { checkNames, loadOrt, session } from "./ort.js";

let ort = null;
let manifest = null;
let sessions = {};
let columnsOf = null;
let stop = false;
let pending = null; // the latest {X, y, columns} sent during a fit

const tensor = (t) => new ort.Tensor("float32", t.data, t.dims);
const scalar = (type, value) => new ort.Tensor(type, type === "int64" ? BigInt64Array.of(BigInt(value)) : Float32Array.of(value), []);

class Trainer {
  constructor(values, step, lr) {
    this.values = values;
    this.stepCount = step;
    this.lr = lr;
    this.specs = [...manifest.params, ...(manifest.state ?? [])];
    this.F = product(manifest.features.shape);
  }

  async run(role, feeds, first) {
    const graph = manifest.graphs[role];
    const named = {};
    for (const [r, t] of Object.entries(feeds)) named[graph.inputs[r]] = t;
    for (const s of this.specs) named[s.train_input] = tensor(this.values[s.train_input]);
    const out = await sessions[role].run(named);
    for (const s of this.specs) {
      const t = out[s.train_output];
      this.values[s.train_input] = { data: t.data, dims: [...t.dims] };
    }
    return out[graph.outputs[first]].data;
  }

  data(X, y, w, from, to, k = null) {
    const n = to - from;
    const fs = manifest.features.shape;
    const weights = w ? w.slice(from, to) : new Float32Array(n).fill(1);
    const labels = BigInt64Array.from(y.subarray(from, to), (v) => BigInt(v));
    const lead = k ? [k, n / k] : [n];
    return {
      features: new ort.Tensor("float32", X.slice(from * this.F, to * this.F), [...lead, ...fs]),
      labels: new ort.Tensor("int64", labels, lead),
      sample_weight: new ort.Tensor("float32", weights, lead),
      lr: scalar("float32", this.lr),
      step: scalar("int64", this.stepCount + 1),
    };
  }

  /** One pass (fitting.run_epoch): full mini-batches in one train_epoch call, the rest via train. */
  async runEpoch(X, y, w, size) {
    const n = y.length;
    const losses = [];
    let from = 0;
    if (sessions.train_epoch) {
      const k = Math.floor(n / size);
      if (k > 0) {
        const out = await this.run("train_epoch", this.data(X, y, w, 0, k * size, k), "losses");
        losses.push(...out);
        this.stepCount += out.length;
        from = k * size;
      }
    }
    for (; from < n; from += size) {
      const to = Math.min(n, from + size);
      const out = await this.run("train", this.data(X, y, w, from, to), "loss");
      losses.push(out[0]);
      this.stepCount += 1;
    }
    return losses;
  }
}

async function scores(values, X, n, logits) {
  const graph = manifest.graphs.infer;
  const output = graph.outputs[logits ? "logits" : "probabilities"];
  const F = product(manifest.features.shape);
  const parts = [];
  for (let from = 0; from < n; from += 256) {
    const rows = Math.min(256, n - from);
    const feeds = { [graph.inputs.features]: new ort.Tensor("float32", X.slice(from * F, (from + rows) * F), [rows, ...manifest.features.shape]) };
    for (const p of manifest.params) feeds[p.infer_input] = tensor(values[p.train_input]);
    parts.push((await sessions.infer.run(feeds, [output]))[output].data);
  }
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

async function init(message) {
  manifest = message.manifest;
  ort = await loadOrt({ url: message.ortUrl, threads: message.threads ?? 1 });
  const specs = [...manifest.params, ...(manifest.state ?? [])];
  sessions = {};
  for (const [role, bytes] of Object.entries(message.graphs)) {
    sessions[role] = await session(ort, bytes, `graph ${role}`);
    const isTrain = role !== "infer";
    checkNames(sessions[role], manifest.graphs[role], role,
      isTrain ? specs.map((s) => s.train_input) : manifest.params.map((p) => p.infer_input),
      isTrain ? specs.map((s) => s.train_output) : []);
  }
  // An older bundle's epoch graph (with a batch_size input): train per mini-batch.
  if (sessions.train_epoch?.inputNames.includes("batch_size")) delete sessions.train_epoch;
  columnsOf = new ClassColumns(manifest, {});
  postMessage({ type: "ready" });
}

async function fit(message) {
  stop = false;
  pending = null;
  const F = product(manifest.features.shape);
  const trainer = new Trainer(message.values, message.step, message.lr);
  const options = message.options ?? {};
  const random = mulberry32(options.seed ?? 0);
  const probe = makeProbe(manifest, scores, Boolean(manifest.graphs.infer.outputs.logits));
  const samples = { X: message.X, y: message.y, columns: message.columns, F };
  const follow = async (current, tr, best) => {
    if (!pending) return [current, best];
    const next = { ...pending, F };
    pending = null;
    // renames made since the fit began keep their columns
    current = { ...current, columns: current.columns.map((c) => (next.renames ?? []).reduce((n, [a, b]) => (n === a ? b : n), c)) };
    const same = next.columns.length === current.columns.length && next.columns.every((c, i) => c === current.columns[i]);
    if (!same) {
      const fresh = next.columns.map((c, i) => (current.columns.includes(c) ? -1 : i)).filter((i) => i >= 0);
      tr.values = columnsOf.remap(tr.values, current.columns, next.columns);
      best = columnsOf.remap(best, current.columns, next.columns);
      columnsOf.imprint(tr.values, next.X, next.y, fresh);
    }
    return [next, best];
  };
  const records = await fitEpochs(trainer, samples, {
    epochs: options.epochs, batchSize: options.batchSize, balanced: options.balanced,
    earlyStop: options.earlyStop, patience: options.patience, minDelta: options.minDelta,
    trainable: manifest.params.map((p) => p.train_input),
    probe, follow,
    accept: async (values, step, s) => postMessage({ type: "accept", values, step, columns: s.columns }),
    report: (record) => postMessage({ type: "record", record }),
    order: (epoch, n) => (options.orders?.[epoch - 1]?.length === n ? options.orders[epoch - 1] : permutation(n, random)),
    stopped: () => stop,
  });
  postMessage({ type: "done", records, values: trainer.values, step: trainer.stepCount });
}

onmessage = async (event) => {
  const message = event.data;
  try {
    if (message.type === "init") await init(message);
    else if (message.type === "fit") await fit(message);
    else if (message.type === "stop") stop = true;
    else if (message.type === "samples") pending = message;
  } catch (error) {
    postMessage({ type: "error", message: error?.message ?? String(error), code: error?.code ?? "error" });
  }
};
