// Kind "audio": a clip -> one row of PCM for an audio base, float32 [samples], mono, at
// the bundle's sample rate: what the Python preparer does (src/edgetune/inputs/audio.py),
// step for step:
//
//   1. read: a Float32Array of samples in [-1, 1] (or Int16Array, Int32Array), mono, at the
//      bundle's rate unless options.sampleRate says otherwise; an AudioBuffer (its own
//      rate, every channel); {samples, sampleRate} or {channels: [...], sampleRate};
//      a WAV file as a Blob/ArrayBuffer (PCM 16/24/32-bit or float, read here, not by
//      the browser's decoder, which would resample);
//   2. clipping is refused: more than 0.5 % of the samples at full scale;
//   3. channels are averaged, then resampled to the bundle's rate (resample() below:
//      Python uses soxr, which a tab cannot run; docs/edgetune-js.md gives the measured
//      difference of features);
//   4. fitted to `samples`: a shorter clip centered between zeros, a longer one cut to
//      the stretch with the most energy;
//   5. silence is refused: RMS of the fitted clip below -50 dBFS.
//
// At the bundle's own rate (16 kHz) the row is bit-identical to Python's.

import { EdgetuneError } from "./manifest.js";

export const SILENCE_DB = -50;
export const MAX_CLIPPED = 0.005;
export const MAX_SECONDS = 600;
const FULL_SCALE = 0.999;

/** {channels: Float32Array[], rate, name} of an audio source (step 1). */
export async function readAudio(source, defaultRate, options = {}) {
  let rate = options.sampleRate ?? null;
  let channels;
  let name = "audio clip";
  if (typeof AudioBuffer !== "undefined" && source instanceof AudioBuffer) {
    rate = source.sampleRate;
    channels = Array.from({ length: source.numberOfChannels }, (_, c) => source.getChannelData(c));
    name = "AudioBuffer";
  } else if (SAMPLE_ARRAYS.some((T) => source instanceof T)) {
    channels = [fromSamples(source, "samples")];
    name = `${source.constructor.name} of ${source.length} samples`;
  } else if (source && (source.samples || source.channels) && !(source instanceof Blob)) {
    rate = source.sampleRate ?? rate;
    channels = (source.channels ?? [source.samples]).map((c) => fromSamples(c, "samples"));
    name = "samples";
  } else if (source instanceof Blob || source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    const bytes = source instanceof Blob ? new Uint8Array(await source.arrayBuffer())
      : source instanceof ArrayBuffer ? new Uint8Array(source)
        : new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    name = source.name ? `audio file ${JSON.stringify(source.name)}` : `audio bytes (${bytes.length} bytes)`;
    ({ channels, rate } = readWav(bytes, name));
  } else {
    throw new EdgetuneError("cannot read an audio clip from this value; pass a Float32Array of mono "
      + "samples in [-1, 1] (with {sampleRate}), an AudioBuffer, or a WAV file (Blob)", "bad_input");
  }
  rate = rate ?? defaultRate;
  if (!(Number.isFinite(rate) && rate >= 1000 && rate <= 384000)) {
    throw new EdgetuneError(`${name}: sample rate ${rate} Hz is not an audio sample rate (1000..384000)`, "bad_input");
  }
  if (!channels.length || !channels[0].length) {
    throw new EdgetuneError(`${name} holds no samples; record a clip of about a second`, "bad_input");
  }
  if (channels[0].length > MAX_SECONDS * rate) {
    throw new EdgetuneError(`${name}: ${(channels[0].length / rate).toFixed(0)} s is longer than the limit `
      + `of ${MAX_SECONDS} s; cut the clip first`, "bad_input");
  }
  return { channels, rate, name };
}

const SAMPLE_ARRAYS = [Float32Array, Float64Array, Int16Array, Int32Array];

function fromSamples(a, name) {
  if (a instanceof Int16Array) return Float32Array.from(a, (v) => v / 32768);
  if (a instanceof Int32Array) return Float32Array.from(a, (v) => v / 2147483648);
  const out = a instanceof Float32Array ? a : Float32Array.from(a);
  let peak = 0;
  for (const v of out) {
    if (!Number.isFinite(v)) throw new EdgetuneError(`${name}: samples must be finite (NaN or infinity found)`, "bad_input");
    peak = Math.max(peak, Math.abs(v));
  }
  if (peak > 1 + 1e-6) {
    throw new EdgetuneError(`${name}: float samples must be in [-1, 1] (peak ${peak.toPrecision(4)}); `
      + "int16 samples as floats: divide by 32768, or pass an Int16Array", "bad_input");
  }
  return out;
}

/** A RIFF/WAVE file's channels (PCM 8/16/24/32-bit, IEEE float 32/64) and rate. */
export function readWav(bytes, name) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (bytes.length < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") {
    throw new EdgetuneError(`${name}: not a WAV file; in the tab, pass WAV files or decode other `
      + "formats to an AudioBuffer (AudioContext.decodeAudioData) first", "bad_input");
  }
  let format = null;
  for (let at = 12; at + 8 <= bytes.length;) {
    const id = tag(at);
    const size = view.getUint32(at + 4, true);
    const body = at + 8;
    if (id === "fmt ") {
      let code = view.getUint16(body, true);
      if (code === 0xfffe && size >= 26) code = view.getUint16(body + 24, true); // extensible
      format = { code, channels: view.getUint16(body + 2, true), rate: view.getUint32(body + 4, true),
        bits: view.getUint16(body + 14, true) };
    } else if (id === "data") {
      if (!format) break;
      const { code, channels: k, rate, bits } = format;
      const width = bits / 8;
      const frames = Math.floor(Math.min(size, bytes.length - body) / (width * k));
      const read = sampleReader(view, code, bits, name);
      const channels = Array.from({ length: k }, () => new Float32Array(frames));
      for (let f = 0; f < frames; f++) {
        for (let c = 0; c < k; c++) channels[c][f] = read(body + (f * k + c) * width);
      }
      return { channels, rate };
    }
    at = body + size + (size & 1);
  }
  throw new EdgetuneError(`${name}: a WAV file without a fmt and a data chunk`, "bad_input");
}

function sampleReader(view, code, bits, name) {
  if (code === 1 && bits === 16) return (at) => view.getInt16(at, true) / 32768;
  if (code === 1 && bits === 8) return (at) => (view.getUint8(at) - 128) / 128;
  if (code === 1 && bits === 24) {
    return (at) => ((view.getUint8(at + 2) << 24 | view.getUint8(at + 1) << 16 | view.getUint8(at) << 8) >> 8) / 8388608;
  }
  if (code === 1 && bits === 32) return (at) => view.getInt32(at, true) / 2147483648;
  if (code === 3 && bits === 32) return (at) => view.getFloat32(at, true);
  if (code === 3 && bits === 64) return (at) => view.getFloat64(at, true);
  throw new EdgetuneError(`${name}: WAV sample format ${code} with ${bits} bits is not supported`, "bad_input");
}

// -- resampling: windowed sinc (Kaiser), polyphase for the rational ratio out/in --------

// Chosen against soxr (HQ) on real speech: 48 zero crossings and a 95.5 % passband give
// a 50 dB signal-to-difference ratio at 48 kHz -> 16 kHz (32 and 94 %: 40 dB), the rest of
// the difference in the top 500 Hz, where the two filters' transition bands differ.
const ZERO_CROSSINGS = 48; // each side, at the cutoff: the filter's length
const ROLLOFF = 0.955; // the passband ends at 95.5 % of the lower Nyquist frequency
const BETA = 8.6; // Kaiser window: about 86 dB stopband
const MAX_PHASES = 4096; // more distinct phases (odd rate pairs): taps computed per sample
const filters = new Map();

function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 64; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return sum;
}

const gcd = (a, b) => (b ? gcd(b, a % b) : a);

/** Taps k = -K+1..K (input samples around floor(t)) for output time t = floor(t) + offset. */
function taps(offset, fc, half, K) {
  const h = new Float64Array(2 * K);
  const norm = besselI0(BETA);
  let sum = 0;
  for (let i = 0; i < 2 * K; i++) {
    const x = i - K + 1 - offset; // distance in input samples
    if (Math.abs(x) >= half) continue;
    const arg = 2 * fc * x;
    const sinc = arg === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg);
    h[i] = 2 * fc * sinc * besselI0(BETA * Math.sqrt(1 - (x / half) ** 2)) / norm;
    sum += h[i];
  }
  for (let i = 0; i < h.length; i++) h[i] /= sum; // unit gain at DC
  return h;
}

/**
 * `mono` resampled from `from` Hz to `to` Hz: round(n * to / from) samples, each a
 * Kaiser-windowed sinc of the input centered on its time (no delay), the input taken
 * as zero outside the clip.
 */
export function resample(mono, from, to) {
  if (from === to) return mono;
  const g = gcd(from, to);
  const L = to / g;
  const M = from / g;
  const fc = 0.5 * Math.min(1, to / from) * ROLLOFF; // cycles per input sample
  const half = ZERO_CROSSINGS / (2 * fc);
  const K = Math.ceil(half) + 1;
  const key = `${from}/${to}`;
  let bank = filters.get(key);
  if (!bank && L <= MAX_PHASES) {
    bank = Array.from({ length: L }, (_, p) => taps(p / L, fc, half, K));
    filters.set(key, bank);
  }
  const n = mono.length;
  const out = new Float32Array(Math.round((n * to) / from));
  for (let j = 0; j < out.length; j++) {
    const base = Math.floor((j * M) / L);
    const phase = (j * M) % L;
    const h = bank ? bank[phase] : taps(phase / L, fc, half, K);
    const start = base - K + 1;
    let acc = 0;
    for (let i = Math.max(0, -start); i < 2 * K && start + i < n; i++) acc += h[i] * mono[start + i];
    out[j] = acc;
  }
  return out;
}

// -- fitting and checks -------------------------------------------------------------------

/** `mono` fitted to `samples` (fit_clip in Python): centered, or the most energetic stretch. */
export function fitClip(mono, samples) {
  const n = mono.length;
  if (n === samples) return Float32Array.from(mono);
  const out = new Float32Array(samples);
  if (n < samples) {
    out.set(mono, Math.floor((samples - n) / 2));
    return out;
  }
  const energy = new Float64Array(n + 1); // a running sum in float64, as numpy's cumsum
  for (let i = 0; i < n; i++) energy[i + 1] = energy[i] + mono[i] * mono[i];
  let start = 0;
  let best = -Infinity;
  for (let s = 0; s + samples <= n; s++) {
    const e = energy[s + samples] - energy[s];
    if (e > best) { best = e; start = s; }
  }
  out.set(mono.subarray(start, start + samples));
  return out;
}

/**
 * The base's row for one clip (steps 1-5): {row: Float32Array [samples], rate (the
 * clip's), name}. spec: the manifest's input; options: sampleRate (of a Float32Array),
 * silenceDb, maxClipped.
 */
export async function prepareAudio(source, spec, options = {}) {
  const target = Number(spec.sample_rate ?? 16000);
  const samples = Number(spec.samples ?? spec.shape?.[1]);
  if (!(Number.isInteger(samples) && samples > 0)) {
    throw new EdgetuneError(`this bundle's audio input has shape ${JSON.stringify(spec.shape)}; clips need a `
      + "fixed [null, samples]: rebuild the bundle from a base with a fixed clip length", "bad_bundle");
  }
  const { channels, rate, name } = await readAudio(source, target, options);
  let full = 0;
  for (const c of channels) for (const v of c) if (Math.abs(v) >= FULL_SCALE) full += 1;
  const clipped = full / (channels.length * channels[0].length);
  if (clipped > (options.maxClipped ?? MAX_CLIPPED)) {
    throw new EdgetuneError(`${name} is clipped: ${(100 * clipped).toFixed(1)}% of its samples are at full `
      + "scale; record it again with a lower input gain (or further from the microphone)", "bad_input");
  }
  let mono = channels[0];
  if (channels.length > 1) { // float32 sums, as numpy's mean(axis=1, dtype=float32)
    mono = new Float32Array(channels[0].length);
    for (let i = 0; i < mono.length; i++) {
      let acc = 0;
      for (const c of channels) acc = Math.fround(acc + c[i]);
      mono[i] = Math.fround(acc / channels.length);
    }
  }
  if (rate !== target) mono = resample(mono, rate, target);
  const row = fitClip(mono, samples);
  let power = 0;
  for (const v of row) power += v * v;
  const level = 20 * Math.log10(Math.max(Math.sqrt(power / samples), 1e-12));
  const silence = options.silenceDb ?? SILENCE_DB;
  if (level < silence) {
    throw new EdgetuneError(`${name} is silent: its level is ${level.toFixed(0)} dBFS, below ${silence} dBFS; `
      + "speak closer to the microphone or check that it records", "bad_input");
  }
  for (let i = 0; i < row.length; i++) row[i] = Math.min(1, Math.max(-1, row[i]));
  return { row, rate, name };
}
