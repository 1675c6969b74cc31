// Class columns (runtime/columns.py and runtime/prototypes.py in JavaScript): every
// parameter and optimizer slot whose manifest shape holds the symbolic dimension
// "classes" has one column per class; the columns follow the class names as classes
// are added, removed and renamed. Tensors here are plain {data: Float32Array, dims}.

import { product } from "./manifest.js";

export const CLASSES = "classes";
const LEGACY = { weight: "head.weight", bias: "head.bias" };
const EPS = 1e-12;
export const IMPRINT_SCALE = 10.0;
export const PROTOTYPE_TEMPERATURE = 0.1;

export const classAxis = (shape) => (shape.includes(CLASSES) ? shape.indexOf(CLASSES) : null);

/** Copy of `t` with `n` entries along `axis` (cut, or zero-padded); `pick[j]` = old index or -1. */
function gather(t, axis, pick) {
  const dims = [...t.dims];
  const outer = product(dims.slice(0, axis));
  const inner = product(dims.slice(axis + 1));
  const old = dims[axis];
  dims[axis] = pick.length;
  const data = new Float32Array(product(dims));
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < pick.length; j++) {
      if (pick[j] < 0) continue;
      const from = (o * old + pick[j]) * inner;
      data.set(t.data.subarray(from, from + inner), (o * pick.length + j) * inner);
    }
  }
  return { data, dims };
}

export class ClassColumns {
  constructor(manifest, init) {
    this.manifest = manifest;
    this.init = init; // {name: {shape, data}} from params.safetensors
    this.params = manifest.params;
    this.state = manifest.state ?? [];
    this.featuresShape = manifest.features.shape;
    this.axis = Object.fromEntries([...this.params, ...this.state].map((s) => [s.train_input, classAxis(s.shape)]));
    const declared = manifest.classes ?? {};
    const find = (role) => {
      const name = typeof declared[role] === "string" ? declared[role] : LEGACY[role];
      return this.params.find((p) => p.name === name) ?? null;
    };
    this.weight = find("weight");
    this.bias = find("bias");
  }

  /** The bundle's initial parameters with `n` class columns; optimizer state zeros. */
  fresh(n) {
    const values = {};
    const byName = {};
    for (const p of this.params) {
      const init = this.init[p.name];
      const t = { data: Float32Array.from(init.data), dims: [...init.shape] };
      const axis = this.axis[p.train_input];
      const pick = axis === null ? null : Array.from({ length: n }, (_, j) => (j < t.dims[axis] ? j : -1));
      values[p.train_input] = axis === null ? t : gather(t, axis, pick);
      byName[p.name] = values[p.train_input].dims;
    }
    for (const s of this.state) {
      const dims = byName[s.param];
      values[s.train_input] = { data: new Float32Array(product(dims)), dims: [...dims] };
    }
    return values;
  }

  /** Reorder the class columns from `columns` to `classes` (by name); new ones zero. */
  remap(values, columns, classes) {
    if (columns.length === classes.length && columns.every((c, i) => c === classes[i])) return values;
    const index = new Map(columns.map((c, i) => [c, i]));
    const pick = classes.map((c) => (index.has(c) ? index.get(c) : -1));
    const out = {};
    for (const [name, t] of Object.entries(values)) {
      const axis = this.axis[name];
      out[name] = axis === null || axis === undefined ? t : gather(t, axis, pick);
    }
    return out;
  }

  get canImprint() {
    const w = this.weight;
    const b = this.bias;
    if (!w || !b || b.shape.length !== 1 || b.shape[0] !== CLASSES) return false;
    const a = w.shape.map(String).sort();
    const e = [...this.featuresShape, CLASSES].map(String).sort();
    return a.length === e.length && a.every((x, i) => x === e[i]);
  }

  /** Start the columns `fresh` of a linear head at the class means of X, y (in place). */
  imprint(values, X, y, fresh) {
    if (!fresh.length || !this.canImprint) return;
    const weight = values[this.weight.train_input];
    const bias = values[this.bias.train_input];
    const classes = bias.dims[0];
    const { W, b } = imprintWeights(X, y, classes, product(this.featuresShape));
    const axis = this.weight.shape.indexOf(CLASSES);
    const inner = product(weight.dims.slice(axis + 1));
    const F = product(this.featuresShape);
    for (const c of fresh) {
      for (let k = 0; k < F; k++) {
        const o = Math.floor(k / inner);
        const i = k % inner;
        weight.data[(o * classes + c) * inner + i] = W[k * classes + c];
      }
      bias.data[c] = b[c];
    }
  }
}

/** Sums of the L2-normalized rows per class (float64) and the counts: the prototypes. */
export function classSums(X, y, classes, F) {
  const sums = new Float64Array(classes * F);
  const counts = new Array(classes).fill(0);
  for (let r = 0; r < y.length; r++) {
    let norm = 0;
    for (let k = 0; k < F; k++) norm += X[r * F + k] * X[r * F + k];
    norm = Math.max(Math.sqrt(norm), EPS);
    const c = y[r];
    for (let k = 0; k < F; k++) sums[c * F + k] += X[r * F + k] / norm;
    counts[c] += 1;
  }
  return { sums, counts };
}

/** The prototypes: normalized class means, float32 [C, F] (zero rows for empty classes). */
export function classMeans(sums, classes, F) {
  const means = new Float32Array(classes * F);
  for (let c = 0; c < classes; c++) {
    let norm = 0;
    for (let k = 0; k < F; k++) norm += sums[c * F + k] ** 2;
    norm = Math.max(Math.sqrt(norm), EPS);
    for (let k = 0; k < F; k++) means[c * F + k] = sums[c * F + k] / norm;
  }
  return means;
}

/** Weight imprinting (prototypes.imprint_weights): W float32 [F, C], b [C]. */
export function imprintWeights(X, y, classes, F, scale = IMPRINT_SCALE) {
  const { sums, counts } = classSums(X, y, classes, F);
  const means = classMeans(sums, classes, F);
  let total = 0;
  for (let r = 0; r < y.length; r++) {
    let norm = 0;
    for (let k = 0; k < F; k++) norm += X[r * F + k] * X[r * F + k];
    total += Math.sqrt(norm);
  }
  const mean = y.length ? total / y.length : 0;
  const r = mean > EPS ? mean : 1.0;
  const W = new Float32Array(F * classes);
  for (let c = 0; c < classes; c++) {
    for (let k = 0; k < F; k++) W[k * classes + c] = means[c * F + k] * (scale / r);
  }
  const b = Float32Array.from(counts, (n) => (n > 0 ? 0 : -scale));
  return { W, b };
}

/** Prototype scores [n, C]: softmax(cos / temperature) over the classes with samples. */
export function prototypeScores(features, n, sums, counts, F, temperature = PROTOTYPE_TEMPERATURE) {
  const classes = counts.length;
  const means = classMeans(sums, classes, F);
  const scores = new Float32Array(n * classes);
  const present = counts.map((c) => c > 0);
  if (!present.some(Boolean)) return scores;
  for (let r = 0; r < n; r++) {
    let norm = 0;
    for (let k = 0; k < F; k++) norm += features[r * F + k] ** 2;
    norm = Math.max(Math.sqrt(norm), EPS);
    const logits = new Array(classes).fill(-Infinity);
    for (let c = 0; c < classes; c++) {
      if (!present[c]) continue;
      let dot = 0;
      for (let k = 0; k < F; k++) dot += (features[r * F + k] / norm) * means[c * F + k];
      logits[c] = dot / temperature;
    }
    const top = Math.max(...logits);
    let total = 0;
    const e = logits.map((l) => (Number.isFinite(l) ? Math.exp(l - top) : 0));
    for (const v of e) total += v;
    for (let c = 0; c < classes; c++) scores[r * classes + c] = e[c] / total;
  }
  return scores;
}
