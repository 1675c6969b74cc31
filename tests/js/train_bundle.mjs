// Train an edgetune bundle with onnxruntime-node, knowing only the bundle's manifest
// (format v1, docs/bundle-format.md) and the ONNX runtime: no edgetune code, no
// autodiff, no training build. tests/test_js_runtime.py runs the same steps in Python
// and compares.
//
//   node train_bundle.mjs BUNDLE_DIR DATA.json [--save FINAL.safetensors]
//
// DATA.json describes the training data and the schedule (files relative to it):
//   {
//     "features": {"file": "features.f32", "shape": [n, ...features.shape]},  // raw LE float32
//     // or, instead of "features", the base graph's raw input (the manifest's `input`:
//     // uint8 pixels of an image bundle, float32 PCM of an audio bundle): the script
//     // runs `graphs.base` on it to get the features, as a device does
//     "inputs":   {"file": "pcm.f32", "shape": [n, ...input.shape[1:]]},     // raw LE
//     // or, for a text bundle (input.kind "text"), the texts themselves: the script reads
//     // the bundle's tokenizer.json with @huggingface/tokenizers (text_tokens.mjs), feeds
//     // the base its input_ids and attention_mask, and reports the token ids it made
//     "texts":    ["a quotation", ...],
//     "labels":   {"file": "labels.i64", "shape": [n]},                       // raw LE int64
//     "lr": 0.01,                      // optional; default: the manifest's optimizer.lr
//     "batches": [[3, 0, 7], ...],     // row indices of the mini-batch of each train step
//     "epoch_batch_size": 8,           // optional: then one epoch over all rows (train_epoch
//                                      // for the full mini-batches, train for the rest)
//     "predict": {"file": "...", "shape": [m, ...]}  // optional: raw inputs (or features,
//                                      // like the training rows) scored at the end: base,
//                                      // then `graphs.infer` with the trained parameters;
//                                      // for texts {"texts": [...]}
//   }
//
// Every sample has weight 1. The steps start from the bundle's initial parameters with
// optimizer state at zeros, `step` = 1; the train_epoch call continues from where the
// steps left off. Prints JSON to stdout:
//   {"runtime", "steps", "losses": [...], "epoch_losses": [...],
//    "params": {name: {"shape", "first": [first values...]}},
//    "features": [...] (when the base ran: the training rows' features, flat),
//    "probabilities": {"shape", "data": [...]} (with "predict"),
//    "tokens": {"input_ids": [[...]], "attention_mask": [[...]], "truncated": [...]}
//    (texts: the training texts', then the predicted texts' rows)}
// and with --save writes the final parameters and optimizer state as safetensors.

import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import ort from "onnxruntime-node";
import { TextTokens } from "./text_tokens.mjs";

const FORMAT = "edgetune.bundle";
const VERSION = 1;

function fail(message) {
  process.stderr.write(`train_bundle.mjs: ${message}\n`);
  process.exit(1);
}

// -- reading the bundle -----------------------------------------------------------------

/** The bytes of a file the manifest names, after checking its sha256. */
function readVerified(bundleDir, entry, where) {
  const name = entry.file;
  if (typeof name !== "string" || name === "" || /[/\\]/.test(name) || name.startsWith(".")) {
    fail(`${where}: ${JSON.stringify(name)} is not a plain file name inside the bundle`);
  }
  const bytes = readFileSync(join(bundleDir, name));
  const digest = createHash("sha256").update(bytes).digest("hex");
  if (digest !== entry.sha256) {
    fail(`${where}: sha256 of ${name} is ${digest}, the manifest says ${entry.sha256}`);
  }
  return bytes;
}

const product = (shape) => shape.reduce((a, b) => a * b, 1);

/**
 * Parse safetensors bytes: an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}, then the
 * raw little-endian data (offsets count from the end of the header).
 * Returns {name: {shape, data: Float32Array}}; only F32 tensors are expected here.
 */
function parseSafetensors(bytes, where) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 8) fail(`${where}: too short for a safetensors file`);
  const headerLength = Number(view.getBigUint64(0, true));
  if (8 + headerLength > bytes.byteLength) fail(`${where}: header runs past the end`);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const dataStart = 8 + headerLength;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = info.data_offsets;
    if (info.dtype !== "F32") fail(`${where}: ${name} has dtype ${info.dtype}, expected F32`);
    if (end - begin !== 4 * product(info.shape) || dataStart + end > bytes.byteLength) {
      fail(`${where}: ${name} has data_offsets ${info.data_offsets} that do not fit its shape`);
    }
    const data = new Float32Array(product(info.shape));
    for (let i = 0; i < data.length; i++) {
      data[i] = view.getFloat32(dataStart + begin + 4 * i, true);
    }
    tensors[name] = { shape: info.shape, data };
  }
  return tensors;
}

/** Serialize {name: {shape, data: Float32Array}} as safetensors (the inverse of above). */
function safetensorsBytes(tensors) {
  const header = {};
  let offset = 0;
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + 4 * data.length] };
    offset += 4 * data.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerBytes = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20); // 8-aligned
  headerBytes.set(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const { data } of Object.values(tensors)) {
    for (let i = 0; i < data.length; i++, at += 4) view.setFloat32(at, data[i], true);
  }
  return out;
}

// -- reading the training data --------------------------------------------------------------

function rawView(dir, entry, bytesPerValue) {
  const bytes = readFileSync(join(dir, entry.file));
  if (bytes.byteLength !== bytesPerValue * product(entry.shape)) {
    fail(`${entry.file}: ${bytes.byteLength} bytes do not hold shape ${entry.shape}`);
  }
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function readFloats(dir, entry) {
  const view = rawView(dir, entry, 4);
  const out = new Float32Array(product(entry.shape));
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

/** Raw inputs of the base graph, typed as the manifest's `input.dtype` says. */
function readInputs(dir, entry, dtype) {
  if (dtype === "float32") return { type: "float32", data: readFloats(dir, entry), shape: entry.shape };
  if (dtype === "uint8") {
    const view = rawView(dir, entry, 1);
    return { type: "uint8", data: new Uint8Array(view.buffer, view.byteOffset, view.byteLength),
             shape: entry.shape };
  }
  return fail(`input.dtype ${dtype}: this script feeds float32 or uint8 inputs`);
}

/**
 * The base graph's features of raw inputs, `chunk` rows per call: the one input of
 * `graphs.base` (whatever its role) takes the rows, its `features` output gives them.
 */
async function baseFeatures(base, inputs, chunk = 8) {
  const inputNames = Object.values(base.graph.inputs);
  if (inputNames.length !== 1) fail(`graphs.base has ${inputNames.length} inputs; expected one`);
  const output = base.graph.outputs.features;
  if (output === undefined) fail("graphs.base has no output role features");
  const n = inputs.shape[0];
  const width = product(inputs.shape.slice(1));
  let features = null;
  let shape = null;
  for (let from = 0; from < n; from += chunk) {
    const rows = Math.min(chunk, n - from);
    const slice = inputs.data.slice(from * width, (from + rows) * width);
    const tensor = new ort.Tensor(inputs.type, slice, [rows, ...inputs.shape.slice(1)]);
    const result = (await base.session.run({ [inputNames[0]]: tensor }))[output];
    if (features === null) {
      shape = [n, ...result.dims.slice(1)];
      features = new Float32Array(product(shape));
    }
    features.set(result.data, from * product(shape.slice(1)));
  }
  return { features, shape };
}

/**
 * Features of texts: the bundle's tokenizer makes input_ids and attention_mask rows
 * (int64 [n, max_length]), the base graph's two inputs (by role) take them, `chunk`
 * rows per call. The rows are kept in `tokens` for the report.
 */
async function textFeatures(base, tokenizer, texts, tokens, chunk = 8) {
  const names = base.graph.inputs;
  for (const role of ["input_ids", "attention_mask"]) {
    if (names[role] === undefined) fail(`graphs.base has no input role ${role}`);
  }
  const L = tokenizer.maxLength;
  let features = null;
  let shape = null;
  for (let from = 0; from < texts.length; from += chunk) {
    const rows = await Promise.all(texts.slice(from, from + chunk).map((t) => tokenizer.encode(t)));
    const ids = new BigInt64Array(rows.length * L);
    const mask = new BigInt64Array(rows.length * L);
    rows.forEach((r, i) => {
      ids.set(r.ids, i * L);
      mask.set(r.mask, i * L);
      tokens.input_ids.push(Array.from(r.ids, Number));
      tokens.attention_mask.push(Array.from(r.mask, Number));
      tokens.truncated.push(r.truncated);
    });
    const result = (await base.session.run({
      [names.input_ids]: new ort.Tensor("int64", ids, [rows.length, L]),
      [names.attention_mask]: new ort.Tensor("int64", mask, [rows.length, L]),
    }))[base.graph.outputs.features];
    if (features === null) {
      shape = [texts.length, ...result.dims.slice(1)];
      features = new Float32Array(product(shape));
    }
    features.set(result.data, from * product(shape.slice(1)));
  }
  return { features, shape };
}

async function readData(path, manifest, base, tokenizer) {
  const spec = JSON.parse(readFileSync(path, "utf8"));
  const dir = dirname(path);
  let features;
  let shape;
  let fromBase = false;
  const tokens = { input_ids: [], attention_mask: [], truncated: [] };
  if (spec.texts) {
    ({ features, shape } = await textFeatures(await base(), await tokenizer(), spec.texts,
      tokens));
    fromBase = true;
  } else if (spec.inputs) {
    ({ features, shape } = await baseFeatures(await base(), readInputs(dir, spec.inputs,
      manifest.input?.dtype ?? "uint8")));
    fromBase = true;
  } else {
    features = readFloats(dir, spec.features);
    shape = spec.features.shape;
  }
  const lview = rawView(dir, spec.labels, 8);
  const labels = new BigInt64Array(product(spec.labels.shape));
  for (let i = 0; i < labels.length; i++) labels[i] = lview.getBigInt64(8 * i, true);
  if (shape[0] !== labels.length) {
    fail(`${path}: ${shape[0]} feature rows but ${labels.length} labels`);
  }
  let predict = null;
  if (spec.predict?.texts) {
    predict = await textFeatures(await base(), await tokenizer(), spec.predict.texts, tokens);
  } else if (spec.predict) {
    predict = fromBase
      ? await baseFeatures(await base(), readInputs(dir, spec.predict,
        manifest.input?.dtype ?? "uint8"))
      : { features: readFloats(dir, spec.predict), shape: spec.predict.shape };
  }
  return { ...spec, features, labels, rowShape: shape.slice(1), fromBase, predict,
           tokens: spec.texts ? tokens : null };
}

/** The given rows of the data as the data tensors of a train graph. */
// The epoch graph's layout: k mini-batches of n rows, [k, n, ...].
function asBatches(tensors, k) {
  return Object.fromEntries(Object.entries(tensors).map(([role, t]) => [
    role, new ort.Tensor(t.type, t.data, [k, t.dims[0] / k, ...t.dims.slice(1)])]));
}

function batchTensors(data, rows) {
  const width = product(data.rowShape);
  const features = new Float32Array(rows.length * width);
  const labels = new BigInt64Array(rows.length);
  rows.forEach((row, i) => {
    if (!(row >= 0 && row < data.labels.length)) fail(`row ${row} is out of range`);
    features.set(data.features.subarray(row * width, (row + 1) * width), i * width);
    labels[i] = data.labels[row];
  });
  return {
    features: new ort.Tensor("float32", features, [rows.length, ...data.rowShape]),
    labels: new ort.Tensor("int64", labels, [rows.length]),
    sample_weight: new ort.Tensor("float32", new Float32Array(rows.length).fill(1), [rows.length]),
  };
}

// -- training -----------------------------------------------------------------------------------

/**
 * Run one call of a training graph (role "train" or "train_epoch"): feed the data
 * roles, then every parameter and optimizer slot through its train_input; take the
 * updated values from the train_outputs for the next call. Returns the graph's
 * outputs by role.
 */
async function runTrainGraph(session, graph, roleFeeds, carried) {
  const feeds = {};
  for (const [role, tensor] of Object.entries(roleFeeds)) {
    const name = graph.inputs[role];
    if (name === undefined) fail(`the graph has no input role ${role}`);
    feeds[name] = tensor;
  }
  for (const slot of carried) feeds[slot.train_input] = slot.value;
  const results = await session.run(feeds);
  for (const slot of carried) slot.value = results[slot.train_output];
  return Object.fromEntries(
    Object.entries(graph.outputs).map(([role, name]) => [role, results[name]]),
  );
}

async function main(argv) {
  const args = argv.slice(2);
  const saveAt = args.indexOf("--save");
  const savePath = saveAt >= 0 ? args.splice(saveAt, 2)[1] : null;
  if (args.length !== 2 || (saveAt >= 0 && !savePath)) {
    fail("usage: node train_bundle.mjs BUNDLE_DIR DATA.json [--save FINAL.safetensors]");
  }
  const [bundleDir, dataPath] = args;

  const manifest = JSON.parse(readFileSync(join(bundleDir, "manifest.json"), "utf8"));
  if (manifest.format !== FORMAT) fail(`${bundleDir} is not an edgetune bundle`);
  if (!(manifest.version >= 1 && manifest.version <= VERSION)) {
    fail(`bundle format version ${manifest.version}; this script reads version ${VERSION}`);
  }

  // Initial values: parameters from the init file; optimizer state from it too when it
  // holds a slot, otherwise zeros shaped like the slot's parameter.
  const init = parseSafetensors(readVerified(bundleDir, manifest.init, "init"), "init");
  const carried = [];
  for (const p of manifest.params) {
    const value = init[p.name];
    if (!value) fail(`init has no value for parameter ${p.name}`);
    const tensor = new ort.Tensor("float32", value.data, value.shape);
    carried.push({ ...p, kind: "param", value: tensor });
  }
  for (const s of manifest.state ?? []) {
    const like = init[s.name] ?? init[s.param];
    if (!like) fail(`state ${s.name}: no value for its parameter ${s.param}`);
    const data = init[s.name] ? init[s.name].data : new Float32Array(like.data.length);
    carried.push({ ...s, kind: "state", value: new ort.Tensor("float32", data, like.shape) });
  }

  const options = {
    executionProviders: ["cpu"],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
  };
  const session = async (role) => {
    const graph = manifest.graphs[role];
    const bytes = readVerified(bundleDir, graph, `graphs.${role}`);
    return { graph, session: await ort.InferenceSession.create(bytes, options) };
  };

  let baseSession = null;
  const base = async () => (baseSession ??= await session("base"));
  // A text bundle's tokenizer: the manifest's input names the file, `files` its hash.
  const tokenizer = async () => {
    const name = manifest.input?.tokenizer;
    const entry = Object.values(manifest.files ?? {}).find((f) => f.file === name);
    if (manifest.input?.kind !== "text" || entry === undefined) {
      fail("texts are for a text bundle (input.kind \"text\", its tokenizer in `files`)");
    }
    const bytes = readVerified(bundleDir, entry, `files (${name})`);
    return new TextTokens(JSON.parse(new TextDecoder().decode(bytes)),
      manifest.input.max_length);
  };
  const data = await readData(dataPath, manifest, base, tokenizer);
  const lr = new ort.Tensor("float32", Float32Array.of(data.lr ?? manifest.optimizer.lr), []);
  let step = 1n; // the `step` input: 1 for the first optimizer step

  // S single steps, one fixed mini-batch each.
  const train = await session("train");
  const losses = [];
  for (const rows of data.batches) {
    const out = await runTrainGraph(train.session, train.graph, {
      ...batchTensors(data, rows),
      lr,
      step: new ort.Tensor("int64", BigInt64Array.of(step), []),
    }, carried);
    losses.push(out.loss.data[0]);
    step += 1n;
  }

  // Consecutive mini-batches over all rows, in order: the full ones in one call of the
  // epoch graph (features [k, n, ...]), a smaller last one through the step graph.
  let epochLosses = [];
  if (manifest.graphs.train_epoch && data.epoch_batch_size) {
    const epoch = await session("train_epoch");
    const size = data.epoch_batch_size;
    const k = Math.floor(data.labels.length / size);
    const rows = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);
    if (k > 0) {
      const out = await runTrainGraph(epoch.session, epoch.graph, {
        ...asBatches(batchTensors(data, rows(0, k * size)), k),
        lr,
        step: new ort.Tensor("int64", BigInt64Array.of(step), []),
      }, carried);
      epochLosses = Array.from(out.losses.data);
      step += BigInt(epochLosses.length);
    }
    if (k * size < data.labels.length) {
      const out = await runTrainGraph(train.session, train.graph, {
        ...batchTensors(data, rows(k * size, data.labels.length)),
        lr,
        step: new ort.Tensor("int64", BigInt64Array.of(step), []),
      }, carried);
      epochLosses.push(out.loss.data[0]);
      step += 1n;
    }
  }

  if (savePath) {
    const tensors = Object.fromEntries(
      carried.map((t) => [t.name, { shape: t.value.dims, data: t.value.data }]),
    );
    writeFileSync(savePath, safetensorsBytes(tensors));
  }
  const params = Object.fromEntries(
    carried.filter((t) => t.kind === "param").map((t) => [
      t.name,
      { shape: t.value.dims, first: Array.from(t.value.data.subarray(0, 8)) },
    ]),
  );
  // Predictions: `graphs.infer` with the trained parameters (each param's infer_input).
  let probabilities;
  if (data.predict) {
    const infer = await session("infer");
    const feeds = {
      [infer.graph.inputs.features]: new ort.Tensor("float32", data.predict.features,
        data.predict.shape),
    };
    for (const t of carried) if (t.kind === "param") feeds[t.infer_input] = t.value;
    const out = (await infer.session.run(feeds))[infer.graph.outputs.probabilities];
    probabilities = { shape: out.dims, data: Array.from(out.data) };
  }
  const runtime = `onnxruntime-node ${ort.env.versions?.node ?? "?"}`;
  process.stdout.write(JSON.stringify({
    runtime, steps: data.batches.length, losses, epoch_losses: epochLosses, params,
    ...(data.fromBase ? { features: Array.from(data.features) } : {}),
    ...(probabilities ? { probabilities } : {}),
    ...(data.tokens ? { tokens: data.tokens } : {}),
  }) + "\n");
}

main(process.argv).catch((error) => fail(error?.stack ?? String(error)));
