// Listening in the tab (audio bundles): the server's streaming detector
// (src/edgetune/runtime/stream.py, Detector) ported to the tab, on edgetune.js's public
// API (baseFeatures, predictFeatures), so the microphone's audio never leaves the browser.
//
//   const d = new Detector(p, { rate: 16000 });
//   d.take(chunk);                       // float32 mono chunks at `rate`, as they come
//   const found = await d.advance();     // [{label, score, start, end}] (seconds)
//   await d.flush();                     // the end: a last window padded with silence
//   d.scores;                            // each class's score over the last windows
//
// The same rule as Python: windows of the bundle's clip length every `hop` seconds,
// scored in batches (the head once trained, else the class prototypes), silent windows
// scored as the background class without running the base, each class's score averaged
// over the last `smoothing` windows; a keyword fires when it crosses `threshold`, again
// only after falling below it, and not within `refractory` seconds of the last one.
// Unlike Python, a tab that cannot keep up skips windows (`lagging`) to stay live, and
// audio at another rate is resampled by linear interpolation (the page asks the
// browser for the bundle's rate, so it seldom is).

export const HOP = 0.1; // seconds between window starts
export const SMOOTHING = 3; // windows averaged
export const THRESHOLD = 0.6; // smoothed score that fires
export const BACKGROUND = ["none"]; // classes that never fire
const BATCH = 4; // windows per base call
const SILENCE_DB = -50; // quieter windows are background
const MAX_LAG_SECONDS = 1; // further behind than this, the oldest windows are skipped

/** Chunks at `from` Hz to `to` Hz by linear interpolation, across chunk boundaries. */
class LinearResampler {
  constructor(from, to) {
    this.step = from / to; // input samples per output sample
    this.t = 0; // the next output's time, in input samples from `last`
    this.last = 0; // the input sample before the current chunk
  }

  push(chunk) {
    const out = [];
    const at = (i) => (i < 0 ? this.last : chunk[i]);
    while (this.t <= chunk.length - 1) {
      const i = Math.floor(this.t);
      const f = this.t - i;
      out.push(at(i - 1) * (1 - f) + at(i) * f);
      this.t += this.step;
    }
    if (chunk.length) this.last = chunk[chunk.length - 1];
    this.t -= chunk.length;
    return Float32Array.from(out);
  }
}

export class Detector {
  constructor(p, { rate = null, hop = HOP, smoothing = SMOOTHING, threshold = THRESHOLD,
    refractory = null, background = BACKGROUND, silenceDb = SILENCE_DB } = {}) {
    if (p.kind?.kind !== "audio") throw new Error("listening needs an audio bundle");
    this.p = p;
    this.rate = p.kind.sampleRate;
    this.window = p.kind.samples;
    this.hop = Math.max(1, Math.round(hop * this.rate));
    this.smoothing = smoothing;
    this.threshold = threshold;
    this.refractory = refractory ?? this.window / this.rate;
    this.background = new Set(background);
    this.silenceDb = silenceDb;
    this.resampler = rate && rate !== this.rate ? new LinearResampler(rate, this.rate) : null;
    this.buffer = new Float32Array(0); // samples from absolute index `offset` on
    this.offset = 0;
    this.next = 0; // the absolute start of the next window
    this.recent = []; // [start, scores] of the last `smoothing` windows
    this.armed = new Map();
    this.lastFire = null;
    this.samples = 0;
    this.windows = 0;
    this.skipped = 0;
    this.computeSeconds = 0;
  }

  /** Take the next chunk of PCM (float32 mono at the detector's source rate). */
  take(chunk) {
    const pcm = this.resampler ? this.resampler.push(chunk) : chunk;
    const joined = new Float32Array(this.buffer.length + pcm.length);
    joined.set(this.buffer);
    joined.set(pcm, this.buffer.length);
    this.buffer = joined;
    this.samples += pcm.length;
  }

  /** Windows complete but not scored yet (behind by this many hops). */
  get lagging() {
    const end = this.offset + this.buffer.length;
    return Math.max(0, Math.floor((end - this.window - this.next) / this.hop) + 1);
  }

  /** Score every complete window (skipping the oldest when far behind); the detections. */
  async advance() {
    const behind = this.lagging - Math.ceil((MAX_LAG_SECONDS * this.rate) / this.hop);
    if (behind > 0) { this.next += behind * this.hop; this.skipped += behind; }
    const found = [];
    for (;;) {
      const starts = [];
      const end = this.offset + this.buffer.length;
      let start = this.next;
      while (starts.length < BATCH && start + this.window <= end) { starts.push(start); start += this.hop; }
      if (!starts.length) break;
      found.push(...await this.score(starts));
      this.next = start;
    }
    const drop = Math.min(this.next - this.offset, this.buffer.length);
    if (drop > 0) { this.buffer = this.buffer.slice(drop); this.offset += drop; }
    return found;
  }

  /** The end of the stream: the complete windows, then one last window padded with
   * silence if the end of the audio is not covered yet. */
  async flush() {
    const found = await this.advance();
    const covered = this.windows ? this.next - this.hop + this.window : 0;
    if (this.samples > covered) found.push(...await this.score([this.next]));
    return found;
  }

  /** Each class's score averaged over the last `smoothing` windows. */
  get scores() {
    if (!this.recent.length) return {};
    const out = {};
    for (const [, s] of this.recent) for (const c of Object.keys(s)) out[c] = 0;
    for (const c of Object.keys(out)) {
      out[c] = this.recent.reduce((sum, [, s]) => sum + (s[c] ?? 0), 0) / this.recent.length;
    }
    return out;
  }

  async score(starts) {
    const t0 = performance.now();
    const n = starts.length;
    const rows = new Float32Array(n * this.window);
    const loud = [];
    starts.forEach((start, i) => {
      const row = rows.subarray(i * this.window, (i + 1) * this.window);
      row.set(this.buffer.subarray(start - this.offset, start - this.offset + this.window));
      let power = 0;
      for (let j = 0; j < row.length; j++) {
        row[j] = Math.max(-1, Math.min(1, row[j]));
        power += row[j] * row[j];
      }
      const db = 20 * Math.log10(Math.max(Math.sqrt(power / this.window), 1e-12));
      if (db >= this.silenceDb) loud.push(i);
    });
    const scores = new Array(n).fill(null);
    if (loud.length) {
      const packed = new Float32Array(loud.length * this.window);
      loud.forEach((i, k) => packed.set(rows.subarray(i * this.window, (i + 1) * this.window), k * this.window));
      const features = await this.p.baseFeatures(packed, loud.length);
      const results = await this.p.predictFeatures(features, loud.length, { openSet: false });
      loud.forEach((i, k) => { scores[i] = results[k].scores; });
    }
    if (loud.length < n) {
      const classes = this.p.classes();
      const quiet = classes.find((c) => this.background.has(c));
      const silent = Object.fromEntries(classes.map((c) => [c, c === quiet ? 1 : 0]));
      for (let i = 0; i < n; i++) if (!scores[i]) scores[i] = silent;
    }
    this.computeSeconds += (performance.now() - t0) / 1000;
    this.windows += n;
    const found = [];
    starts.forEach((start, i) => {
      const d = this.decide(start, scores[i]);
      if (d) found.push(d);
    });
    return found;
  }

  decide(start, scores) {
    this.recent.push([start, scores]);
    if (this.recent.length > this.smoothing) this.recent.shift();
    const smoothed = this.scores;
    for (const [label, value] of Object.entries(smoothed)) if (value < this.threshold) this.armed.set(label, true);
    const keywords = Object.keys(smoothed).filter((c) => !this.background.has(c));
    if (!keywords.length) return null;
    const best = keywords.reduce((a, b) => (smoothed[b] > smoothed[a] ? b : a));
    const now = (start + this.window) / this.rate;
    const quiet = this.lastFire !== null && now - this.lastFire < this.refractory - 1e-9;
    if (smoothed[best] < this.threshold || this.armed.get(best) === false) return null;
    this.armed.set(best, false);
    if (quiet) return null;
    this.lastFire = now;
    const peak = this.recent.reduce((a, b) => ((b[1][best] ?? 0) > (a[1][best] ?? 0) ? b : a))[0];
    const end = Math.min(peak + this.window, Math.max(this.samples, peak + 1));
    return { label: best, score: smoothed[best], start: peak / this.rate, end: end / this.rate };
  }
}
