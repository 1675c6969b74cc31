// Open-set answers: "unknown" for an input far from every class the user taught, the
// rule of the Python runtime (src/edgetune/runtime/openset.py), on the cached features
// only (so it is the same for every head, and before training):
//
// - distance of an input to a class: the cosine distance 1 - cos(x, p_c) to the class
//   prototype (the L2-normalized mean of the class's L2-normalized features);
// - each class's threshold: the leave-one-out distances of its samples to the prototype
//   of the class's other samples, their 0.95 quantile (numpy's linear interpolation),
//   times 2; classes with fewer than 5 samples use at least the pooled threshold (the
//   same quantile over every foreground class's leave-one-out distances);
// - an answer is unknown when the input is farther than the threshold of the class
//   picked; the label becomes "unknown", or "none" in a profile with the background
//   class "none" (which has no threshold and is never rejected).

export const UNKNOWN = "unknown";
export const BACKGROUND = "none";
export const QUANTILE = 0.95;
export const MARGIN = 2.0;
export const MIN_OWN = 5;
const EPS = 1e-12;

/**
 * Cached features as the rows prototypes and the open set compare: {Z: [n * F], F}. The
 * features as they are, or for layout "tokens+mask" (a text bundle trained beyond its
 * head caches [n, L, H + 1]: each token's activations, its mask last) their mean over
 * the real tokens, [n, H]: a sentence vector (comparable in Python).
 */
export function comparable(X, n, shape, layout) {
  if (layout !== "tokens+mask") return { Z: X, F: shape.reduce((a, b) => a * b, 1) };
  const [L, W] = shape;
  const H = W - 1;
  const Z = new Float32Array(n * H);
  for (let r = 0; r < n; r++) {
    let count = 0;
    const acc = new Float64Array(H);
    for (let t = 0; t < L; t++) {
      const at = (r * L + t) * W;
      const mask = X[at + H];
      count += mask;
      for (let k = 0; k < H; k++) acc[k] += X[at + k] * mask;
    }
    for (let k = 0; k < H; k++) Z[r * H + k] = acc[k] / Math.max(count, 1e-9);
  }
  return { Z, F: H };
}

/** Rows [n, F] L2-normalized, float64. */
function normalized(X, n, F) {
  const Z = new Float64Array(n * F);
  for (let r = 0; r < n; r++) {
    let norm = 0;
    for (let k = 0; k < F; k++) norm += X[r * F + k] * X[r * F + k];
    norm = Math.max(Math.sqrt(norm), EPS);
    for (let k = 0; k < F; k++) Z[r * F + k] = X[r * F + k] / norm;
  }
  return Z;
}

/** numpy.quantile(values, q) with the default linear method. */
export function quantile(values, q) {
  const a = Float64Array.from(values).sort();
  const pos = q * (a.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, a.length - 1);
  const t = pos - lo;
  const diff = a[hi] - a[lo];
  return t >= 0.5 ? a[hi] - diff * (1 - t) : a[lo] + diff * t; // numpy's _lerp
}

/** Each sample's distance to the prototype of the other samples of its class (NaN: alone). */
export function looDistances(X, y, classes, F) {
  const n = y.length;
  const Z = normalized(X, n, F);
  const sums = new Float64Array(classes * F);
  const counts = new Int32Array(classes);
  for (let r = 0; r < n; r++) {
    counts[y[r]] += 1;
    for (let k = 0; k < F; k++) sums[y[r] * F + k] += Z[r * F + k];
  }
  const out = new Float64Array(n).fill(NaN);
  for (let r = 0; r < n; r++) {
    const c = y[r];
    let norm = 0;
    let dot = 0;
    for (let k = 0; k < F; k++) {
      const rest = sums[c * F + k] - Z[r * F + k];
      norm += rest * rest;
      dot += rest * Z[r * F + k];
    }
    norm = Math.sqrt(norm);
    if (counts[c] > 1 && norm > EPS) out[r] = 1 - dot / norm;
  }
  return out;
}

/** {thresholds: {class: number | null}, pooled} from the samples X [n * F], y [n]. */
export function calibrate(X, y, classes, F, q = QUANTILE, margin = MARGIN) {
  const d = looDistances(X, y, classes.length, F);
  const counts = new Int32Array(classes.length);
  for (const c of y) counts[c] += 1;
  const pool = [];
  d.forEach((v, r) => { if (Number.isFinite(v) && classes[y[r]] !== BACKGROUND) pool.push(v); });
  const pooled = pool.length ? quantile(pool, q) * margin : null;
  const thresholds = {};
  classes.forEach((name, i) => {
    if (name === BACKGROUND || counts[i] === 0) {
      thresholds[name] = null;
      return;
    }
    const own = [];
    d.forEach((v, r) => { if (y[r] === i && Number.isFinite(v)) own.push(v); });
    let t = own.length ? quantile(own, q) * margin : null;
    if (counts[i] < MIN_OWN && pooled !== null) t = t === null ? pooled : Math.max(t, pooled);
    thresholds[name] = t;
  });
  return { thresholds, pooled, quantile: q, margin };
}

const round6 = (v) => Math.round(v * 1e6) / 1e6;

/**
 * Each answer {label, scores, ...} judged (judge_all in Python): adds unknown, class
 * (the class picked), distance and threshold; the label becomes "unknown" (or "none")
 * when the input is farther than the picked class's threshold. feats: [n * F];
 * means: the prototypes of `classes`, float32 [C * F] (zero rows: classes without samples).
 */
export function judgeAll(feats, F, answers, classes, means, calibration) {
  const Z = normalized(feats, answers.length, F);
  const background = classes.includes(BACKGROUND);
  return answers.map((answer, r) => {
    const picked = answer.label;
    const c = classes.indexOf(picked);
    let distance = null;
    if (c >= 0) {
      let dot = 0;
      for (let k = 0; k < F; k++) dot += Z[r * F + k] * means[c * F + k];
      distance = 1 - dot;
    }
    const threshold = calibration.thresholds[picked] ?? null;
    let far;
    if (picked === BACKGROUND) far = false;
    else if (distance === null || !Number.isFinite(distance)) far = true; // nothing vouches for it
    else far = threshold !== null && distance > threshold;
    return { ...answer, unknown: far, class: picked,
      distance: distance === null ? null : round6(distance),
      threshold: threshold === null ? null : round6(threshold),
      ...(far ? { label: background ? BACKGROUND : UNKNOWN } : {}) };
  });
}
