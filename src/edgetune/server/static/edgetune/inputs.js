// The input kinds of a bundle (manifest.input.kind), each turning a source into one row
// of the base's input and rows into the base's feeds, as edgetune.inputs does in Python:
//
//   image   HTMLVideoElement, canvas, ImageBitmap, ImageData, Blob -> uint8 [h, w, 3] (image.js)
//   audio   Float32Array (+ {sampleRate}), Int16Array, AudioBuffer, WAV Blob -> float32 [samples] (audio.js)
//   text    string or .txt Blob -> int64 ids and mask [2, max_length] (text.js)
//   tensor  no preparer: addFeatures only
//
// kind.rowLength: the length of one row (audio also: kind.sampleRate, kind.samples);
// kind.prepare(source, options) -> {row, pixels?, pcm?, truncated?}; kind.feeds(ort,
// rows, n) -> the base's feeds for n rows laid end to end.

import { prepareAudio } from "./audio.js";
import { EdgetuneError, product } from "./manifest.js";
import { preparePixels } from "./image.js";
import { TextTokens } from "./text.js";

export const KINDS = ["image", "audio", "text", "tensor"];

/** The input kind of an opened bundle; `graph`: the base graph's manifest entry. */
export async function inputKind(bundle, graph, options = {}) {
  const spec = bundle.manifest.input ?? {};
  const kind = spec.kind ?? "image";
  const names = Object.values(graph.inputs);
  if (kind === "image" || kind === "tensor") {
    const shape = spec.shape ?? [null, 224, 224, 3];
    const [, height, width] = shape;
    const dtype = spec.dtype ?? "uint8";
    return {
      kind,
      rowLength: product(shape.slice(1)),
      async prepare(source) {
        if (kind === "tensor") throw new EdgetuneError("input kind tensor: use addFeatures", "bad_input");
        const pixels = await preparePixels(source, width, height);
        return { row: pixels, pixels };
      },
      feeds: (ort, rows, n) => ({ [names[0]]: new ort.Tensor(dtype, rows, [n, ...shape.slice(1)]) }),
    };
  }
  if (kind === "audio") {
    const samples = Number(spec.samples ?? spec.shape?.[1]);
    return {
      kind,
      sampleRate: Number(spec.sample_rate ?? 16000),
      samples,
      rowLength: samples,
      async prepare(source, opts = {}) {
        const { row } = await prepareAudio(source, spec, opts);
        return { row, pcm: row };
      },
      feeds: (ort, rows, n) => ({ [names[0]]: new ort.Tensor("float32", rows, [n, samples]) }),
    };
  }
  if (kind === "text") {
    const tokens = await TextTokens.load(bundle, spec, options.tokenizersUrl);
    const L = tokens.maxLength;
    const ids = graph.inputs.input_ids ?? spec.input_ids ?? "input_ids";
    const mask = graph.inputs.attention_mask ?? spec.attention_mask ?? "attention_mask";
    return {
      kind,
      tokens,
      rowLength: 2 * L,
      async prepare(source) {
        const encoded = await tokens.encode(source);
        const row = new BigInt64Array(2 * L);
        row.set(encoded.ids);
        row.set(encoded.mask, L);
        return { row, truncated: encoded.truncated };
      },
      feeds(ort, rows, n) { // rows: [n, 2, L] -> ids [n, L] and mask [n, L]
        const a = new BigInt64Array(n * L);
        const b = new BigInt64Array(n * L);
        for (let r = 0; r < n; r++) {
          a.set(rows.subarray(2 * r * L, (2 * r + 1) * L), r * L);
          b.set(rows.subarray((2 * r + 1) * L, (2 * r + 2) * L), r * L);
        }
        return { [ids]: new ort.Tensor("int64", a, [n, L]), [mask]: new ort.Tensor("int64", b, [n, L]) };
      },
    };
  }
  throw new EdgetuneError(`input kind ${JSON.stringify(kind)} is not one edgetune.js knows (${KINDS.join(", ")})`,
    "bad_bundle");
}
