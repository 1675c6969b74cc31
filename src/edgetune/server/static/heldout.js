// Per-class accuracy on held-out samples in the tab: what the server's holdout.py does
// in server mode. The page's own head is trained on every sample, so it cannot be scored
// on them; a throwaway copy (another profile in its own IndexedDB database, the same
// bundle, classes, cached features and settings) is trained on the rest and scored:
//
//   const report = await heldOutAccuracy(p, { epochs: 30, lr: null, batchSize: null, earlyStop: true });
//   report.per_class.mug;  // {n: 3, correct: 3, accuracy: 1}
//
// The split rule is holdout.py's: 20% of each class (at least one), a class with a single
// sample keeps it for training, chosen at random with a fixed seed (the random numbers
// are not numpy's, so the rows differ from the server's). No base runs: the copy is a
// head only (`base: false`) fed the features stored with the samples (trainingData()),
// so this costs one head fit.

import { Personalizer } from "./edgetune.js";
import { mulberry32 } from "./edgetune/fit.js"; // floats in [0, 1) from a seed

export const HELD_OUT = 0.2;
const DATABASE = "edgetune-heldout";
const PROFILE = "heldout";

/** Held-out rows (a Uint8Array mask): `fraction` of each class, at least one; a class
 * with a single sample keeps it for training. */
export function split(y, nClasses, fraction = HELD_OUT, seed = 0) {
  const rand = mulberry32(seed);
  const test = new Uint8Array(y.length);
  for (let k = 0; k < nClasses; k++) {
    const rows = [];
    y.forEach((label, i) => { if (label === k) rows.push(i); });
    if (rows.length < 2) continue;
    const take = Math.min(rows.length - 1, Math.max(1, Math.round(fraction * rows.length)));
    for (let i = 0; i < take; i++) { // a partial Fisher-Yates shuffle
      const j = i + Math.floor(rand() * (rows.length - i));
      [rows[i], rows[j]] = [rows[j], rows[i]];
      test[rows[i]] = 1;
    }
  }
  return test;
}

/**
 * {accuracy, n, train, fraction, per_class: {class: {n, correct, accuracy}}} of a head
 * trained like `p`'s (`settings`: epochs, lr, batchSize, earlyStop) on the samples not
 * held out, or null when no class has two samples.
 */
export async function heldOutAccuracy(p, settings, fraction = HELD_OUT) {
  const { X, y } = p.trainingData(); // the stored samples' features
  const names = p.classes();
  const F = X.length / Math.max(1, y.length);
  const test = split(y, names.length, fraction);
  const nTest = test.reduce((a, b) => a + b, 0);
  if (!nTest) return null;
  const train = [];
  const held = [];
  test.forEach((t, i) => (t ? held : train).push(i));
  const rows = (idx) => {
    const out = new Float32Array(idx.length * F);
    idx.forEach((r, i) => out.set(X.subarray(r * F, (r + 1) * F), i * F));
    return out;
  };
  await Personalizer.removeProfile(PROFILE, { database: DATABASE }); // a crash may have left one
  const copy = await Personalizer.open(p.bundle.url, { profile: PROFILE, database: DATABASE, threads: 1,
    base: false });
  let answers;
  try {
    for (const name of names) await copy.addClass(name); // the same columns, in the same order
    await copy.addFeatures(rows(train), train.map((r) => names[y[r]]));
    await copy.fit({ epochs: settings.epochs, lr: settings.lr ?? undefined,
      batchSize: settings.batchSize ?? undefined, earlyStop: settings.earlyStop ?? true });
    answers = await copy.predictFeatures(rows(held), held.length);
  } finally {
    copy.close(); // the worker, the database connection, the onnxruntime sessions
    await Personalizer.removeProfile(PROFILE, { database: DATABASE }).catch(() => {});
  }
  // the best class among the classes (an open-set "unknown" answer does not count here)
  const guess = answers.map((a) => names.reduce((best, c) => ((a.scores[c] ?? -Infinity) > (a.scores[best] ?? -Infinity) ? c : best), names[0]));
  const per_class = {};
  let right = 0;
  for (const name of names) {
    let n = 0;
    let correct = 0;
    held.forEach((r, i) => {
      if (names[y[r]] !== name) return;
      n += 1;
      if (guess[i] === name) correct += 1;
    });
    right += correct;
    per_class[name] = { n, correct, accuracy: n ? correct / n : null };
  }
  return { accuracy: right / held.length, n: held.length, train: train.length, fraction, per_class };
}
