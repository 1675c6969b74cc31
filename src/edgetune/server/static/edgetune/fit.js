// The fit loop (runtime/fitting.py and runtime/objective.py in JavaScript): epochs
// over the cached features in a random order; after each, the objective (the bundle's
// own loss on all samples with class-balanced weights, forward only through `infer`);
// keep the best parameters (the starting ones included), roll back and lower the
// learning rate tenfold on divergence, stop early on a plateau. Runs in the worker.

export const EXPLODE_FACTOR = 10.0;
export const GROWTH_LIMIT = 1e3;
export const MAX_ROLLBACKS = 3;
export const DEFAULT_BATCH = 32;
export const PATIENCE = 10;
export const MIN_DELTA = 1e-3;

const copyValues = (values) => Object.fromEntries(
  Object.entries(values).map(([k, t]) => [k, { data: Float32Array.from(t.data), dims: [...t.dims] }]));

/** Weights so every present class counts equally: n / (classes present * count). */
export function balancedWeights(y, classes) {
  const counts = new Array(classes).fill(0);
  for (const c of y) counts[c] += 1;
  const present = Math.max(counts.filter((c) => c > 0).length, 1);
  return Float32Array.from(y, (c) => y.length / (present * counts[c]));
}

function logSoftmaxRow(z) {
  const top = Math.max(...z);
  let total = 0;
  for (const v of z) total += Math.exp(v - top);
  const lse = Math.log(total);
  return z.map((v) => v - top - lse);
}

/** logits row (numbers), label -> that row's loss, for the manifest's loss; null if unknown. */
export function rowLoss(config) {
  const name = config?.name;
  if (name === "SoftmaxCrossEntropy") {
    const eps = Number(config.label_smoothing || 0);
    const cw = config.class_weights ?? null;
    return (z, c) => {
      const logp = logSoftmaxRow(z);
      let nll = -logp[c];
      let smooth = 0;
      if (cw) {
        nll *= cw[c];
        for (let j = 0; j < z.length; j++) smooth -= logp[j] * cw[j];
      } else {
        for (let j = 0; j < z.length; j++) smooth -= logp[j];
      }
      smooth /= z.length;
      return (1 - eps) * nll + eps * smooth;
    };
  }
  if (name === "MultiClassHinge") {
    const margin = Number(config.margin ?? 1.0);
    const power = Number.parseInt(config.p ?? 1, 10);
    return (z, c) => {
      let total = 0;
      for (let j = 0; j < z.length; j++) if (j !== c) total += Math.max(0, margin - z[c] + z[j]) ** power;
      return total / z.length;
    };
  }
  if (name === "MeanSquaredError") {
    return (z, c) => z.reduce((s, v, j) => s + (v - (j === c ? 1 : 0)) ** 2, 0) / z.length;
  }
  if (name === "BinaryCrossEntropyWithLogits") {
    return (z, c) => z.reduce((s, v, j) => s + Math.max(v, 0) - v * (j === c ? 1 : 0)
      + Math.log1p(Math.exp(-Math.abs(v))), 0) / z.length;
  }
  return null;
}

/**
 * The objective under `values` (fitting.BundleProbe): `scores(values, X, n)` gives the
 * infer graph's logits (or probabilities when `rows` is null) [n, C] as a Float32Array.
 */
export function makeProbe(manifest, scores, hasLogits) {
  const rows = hasLogits ? rowLoss(manifest.loss) : null;
  const l2 = rows && typeof manifest.l2 === "number" && manifest.l2 > 0 ? manifest.l2 : 0;
  const trainable = manifest.params.map((p) => p.train_input);
  return async (values, X, y, weights) => {
    const n = y.length;
    const out = await scores(values, X, n, rows !== null);
    const C = out.length / Math.max(n, 1);
    let num = 0;
    let den = 0;
    for (let r = 0; r < n; r++) {
      const z = Array.from(out.subarray(r * C, (r + 1) * C));
      const v = rows ? rows(z, y[r]) : -Math.log(Math.max(z[y[r]], 1e-30));
      const w = weights ? weights[r] : 1;
      num += v * w;
      den += w;
    }
    let value = num / Math.max(den, 1e-12);
    if (l2) {
      let sq = 0;
      for (const name of trainable) for (const v of values[name].data) sq += v * v;
      value += 0.5 * l2 * sq;
    }
    return value;
  };
}

function divergence(fit, reference, values, scale, trainable) {
  if (!Number.isFinite(fit)) return `the loss became ${fit}`;
  if (fit > EXPLODE_FACTOR * (reference + 1.0)) {
    return `the cross-entropy on the samples exploded to ${fit.toPrecision(4)} (it was `
      + `${reference.toPrecision(4)} before training)`;
  }
  for (const name of trainable) {
    let peak = 0;
    for (const v of values[name].data) {
      if (!Number.isFinite(v)) return `parameter ${name} became non-finite`;
      peak = Math.max(peak, Math.abs(v));
    }
    if (peak > GROWTH_LIMIT * (1.0 + scale[name])) {
      return `parameter ${name} exploded to ${peak.toPrecision(3)} (it was ${scale[name].toPrecision(3)})`;
    }
  }
  return null;
}

/** Let queued messages run (a MessageChannel task: no setTimeout clamping). */
function yieldToEvents() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(0);
  });
}

/** A seeded permutation (mulberry32 + Fisher-Yates): the order of an epoch. */
export function permutation(n, random) {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Train up to `epochs` epochs (fitting.fit_epochs). trainer: {values, stepCount, lr,
 * runEpoch(X, y, w, batchSize) -> losses}. samples: {X: Float32Array, y: Int32Array,
 * columns, F}. follow(samples, trainer, best) -> [samples, best] before each epoch;
 * accept(best, step, samples) when parameters improve; report(record) per record;
 * order(epoch, n) -> the epoch's row order; stopped() -> true to stop.
 */
export async function fitEpochs(trainer, samples, opts) {
  const { epochs, probe, follow, accept, report, order, stopped, trainable } = opts;
  const balanced = opts.balanced ?? true;
  const earlyStop = opts.earlyStop ?? true;
  const patience = opts.patience ?? PATIENCE;
  const minDelta = opts.minDelta ?? MIN_DELTA;
  const records = [];
  const emit = (record) => { records.push(record); report?.(record); };
  const weightsOf = (s) => (balanced ? balancedWeights(s.y, s.columns.length) : null);
  const objective = async (values, s) => {
    const v = await probe(values, s.X, s.y, weightsOf(s));
    return Number.isFinite(v) ? v : Infinity;
  };

  let lr = trainer.lr;
  let best = copyValues(trainer.values);
  let bestStep = trainer.stepCount;
  let bestEpoch = 0;
  let rollbacks = 0;
  const start = await objective(best, samples);
  let bestObjective = start;
  const reference = Number.isFinite(start) ? start : 0.0;
  const scale = Object.fromEntries(Object.entries(best).map(([k, t]) => [k, t.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0)]));
  const window = [];
  for (let epoch = 1; epoch <= epochs; epoch++) {
    // onnxruntime-web's wasm runs resolve in microtasks: without a task boundary the
    // worker would never see the page's messages (stop, new samples) during a fit.
    await yieldToEvents();
    if (stopped()) {
      emit({ epoch: epoch - 1, event: "stopped", message: "stopped on request" });
      break;
    }
    const t0 = performance.now();
    const before = samples;
    [samples, best] = await follow(samples, trainer, best);
    if (samples !== before) {
      bestObjective = await objective(best, samples);
      window.length = 0;
      for (const k of Object.keys(best)) {
        if (!(k in scale)) scale[k] = 0;
      }
    }
    const { X, y, F } = samples;
    const n = y.length;
    const weights = weightsOf(samples);
    const size = Math.min(opts.batchSize || DEFAULT_BATCH, n);
    const rows = order(epoch, n);
    const Xo = new Float32Array(n * F);
    const yo = new Int32Array(n);
    const wo = weights ? new Float32Array(n) : null;
    rows.forEach((row, i) => {
      Xo.set(X.subarray(row * F, (row + 1) * F), i * F);
      yo[i] = y[row];
      if (wo) wo[i] = weights[row];
    });
    const losses = await trainer.runEpoch(Xo, yo, wo, size);
    const loss = losses.reduce((a, b) => a + b, 0) / losses.length;
    const after = await probe(trainer.values, X, y, weights);
    const problem = !Number.isFinite(loss) ? `the loss became ${loss}`
      : divergence(after, reference, trainer.values, scale, trainable);
    if (problem) {
      rollbacks += 1;
      trainer.values = copyValues(best);
      trainer.stepCount = bestStep;
      trainer.lr = lr = lr * 0.1;
      emit({ epoch, event: "rollback", loss, lr,
        message: `${problem}; rolled back to the last good parameters and lowered the learning rate to ${lr.toPrecision(3)}` });
      if (rollbacks >= MAX_ROLLBACKS) {
        emit({ epoch, event: "stopped", message: `stopped after ${rollbacks} rollbacks` });
        break;
      }
      continue;
    }
    if (after < bestObjective) {
      best = copyValues(trainer.values);
      bestStep = trainer.stepCount;
      bestEpoch = epoch;
      bestObjective = after;
      await accept(best, bestStep, samples);
    }
    emit({ epoch, loss, objective: after, lr, samples: n, seconds: (performance.now() - t0) / 1000 });
    window.push(bestObjective);
    if (window.length > patience) {
      const old = window.shift();
      if (earlyStop && old - bestObjective <= minDelta * Math.abs(old)) {
        emit({ epoch, event: "early_stop",
          message: `converged: the objective improved by less than ${(minDelta * 100).toPrecision(2)}% in ${patience} epochs` });
        break;
      }
    }
  }
  trainer.values = copyValues(best);
  trainer.stepCount = bestStep;
  const kept = bestEpoch
    ? `kept the parameters of epoch ${bestEpoch} (objective ${bestObjective.toPrecision(4)}, from ${start.toPrecision(4)})`
    : `kept the starting parameters: no epoch fit the samples better (objective ${start.toPrecision(4)})`;
  emit({ epoch: bestEpoch, event: "kept", objective: bestObjective, start, improved: bestEpoch > 0, message: kept });
  return records;
}
