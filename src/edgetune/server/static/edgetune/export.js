// One standalone ONNX model from base + infer + trained parameters, at the protobuf
// level (runtime/export.py in JavaScript, no ONNX library): the base's graph without
// its outputs, the infer graph's nodes and initializers with its internal names under
// "head/", the trained parameters as initializers, the class names and the input's
// preparation in the metadata. Field numbers are onnx.proto's.

const MODEL = { producer: 2, graph: 7, metadata: 14 };
const GRAPH = { node: 1, initializer: 5, output: 12 };
const NODE_NAMES = new Set([1, 2, 3]); // input, output, name
const TENSOR = { dims: 1, dataType: 2, name: 8, raw: 9 };
const FLOAT = 1;
const PREFIX = "head/";
const utf8 = new TextEncoder();
const text = new TextDecoder();

function readVarint(bytes, pos) {
  let value = 0;
  let shift = 0;
  for (;;) {
    if (pos >= bytes.length) throw new Error("truncated varint");
    const b = bytes[pos++];
    value += (b & 0x7f) * 2 ** shift;
    if (!(b & 0x80)) return [value, pos];
    shift += 7;
  }
}

/** [{number, wire, value, raw}] of one message; `raw` is the field's bytes as written. */
export function fields(bytes) {
  const out = [];
  let pos = 0;
  while (pos < bytes.length) {
    const start = pos;
    let key;
    [key, pos] = readVarint(bytes, pos);
    const number = Math.floor(key / 8);
    const wire = key & 7;
    let value;
    if (wire === 0) [value, pos] = readVarint(bytes, pos);
    else if (wire === 1) { value = bytes.subarray(pos, pos + 8); pos += 8; }
    else if (wire === 2) {
      let length;
      [length, pos] = readVarint(bytes, pos);
      if (pos + length > bytes.length) throw new Error("truncated length-delimited field");
      value = bytes.subarray(pos, pos + length);
      pos += length;
    } else if (wire === 5) { value = bytes.subarray(pos, pos + 4); pos += 4; }
    else throw new Error(`unsupported wire type ${wire}`);
    if (pos > bytes.length) throw new Error("truncated field");
    out.push({ number, wire, value, raw: bytes.subarray(start, pos) });
  }
  return out;
}

function varint(value) {
  const out = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value) byte |= 0x80;
    out.push(byte);
  } while (value);
  return Uint8Array.from(out);
}

const concat = (parts) => {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};

/** A length-delimited field (bytes or a string), or a varint field (a number). */
function field(number, value) {
  if (typeof value === "number") return concat([varint(number * 8), varint(value)]);
  const data = typeof value === "string" ? utf8.encode(value) : value;
  return concat([varint(number * 8 + 2), varint(data.length), data]);
}

const rename = (message, names, to) => concat(fields(message).map((f) => (
  names.has(f.number) && f.wire === 2 ? field(f.number, to(text.decode(f.value))) : f.raw)));

function tensorProto(name, t) {
  const raw = new Uint8Array(t.data.length * 4);
  const view = new DataView(raw.buffer);
  t.data.forEach((v, i) => view.setFloat32(4 * i, v, true));
  return concat([...t.dims.map((d) => field(TENSOR.dims, d)), field(TENSOR.dataType, FLOAT),
    field(TENSOR.name, name), field(TENSOR.raw, raw)]);
}

const nameOf = (message) => text.decode(fields(message).find((f) => f.number === 1 && f.wire === 2)?.value ?? new Uint8Array());

/** Metadata documenting the input (export.input_metadata): filter, crop, resize, one line. */
export function inputMetadata(spec) {
  const s = { ...spec };
  const kind = s.kind ?? "image";
  if (kind !== "image") {
    return { "edgetune.input": JSON.stringify(s),
      "edgetune.preprocessing": `${kind} input '${s.name}': ${s.dtype} ${JSON.stringify(s.shape)}; fed as is` };
  }
  s.filter ??= "lanczos";
  s.crop ??= "center";
  s.resize ??= "cover";
  const shape = s.shape ?? [null, 224, 224, 3];
  const inside = s.preprocessing?.formula;
  const line = `Feed uint8 RGB pixels, NHWC [batch, ${shape[1]}, ${shape[2]}, 3], to input '${s.name}': `
    + `resize the image with a ${s.filter} filter so that it covers ${shape[2]}x${shape[1]} (keep its `
    + `aspect ratio; the shorter side fits), then ${s.crop}-crop the overflow; no stretching, no `
    + `borders, no normalization: the model normalizes inside${inside ? ` (${inside})` : ""}.`;
  return { "edgetune.input": JSON.stringify(s), "edgetune.preprocessing": line };
}

/**
 * base, infer: model bytes; baseFeatures / inferFeatures: the tensor joining them;
 * params: {infer_input name: {data, dims}}; metadata: {key: string}. -> model bytes.
 */
export function composeStandalone(base, infer, baseFeatures, inferFeatures, params, metadata) {
  const graphOf = (model) => {
    const all = fields(model);
    const graph = all.find((f) => f.number === MODEL.graph && f.wire === 2);
    if (!graph) throw new Error("model has no graph");
    return [graph.value, all.filter((f) => f !== graph)];
  };
  const [baseGraph, baseRest] = graphOf(base);
  const [inferGraph] = graphOf(infer);
  const inferFields = fields(inferGraph);
  const outputs = new Set(inferFields.filter((f) => f.number === GRAPH.output).map((f) => nameOf(f.value)));
  const to = (name) => (!name || outputs.has(name) ? name : name === inferFeatures ? baseFeatures : PREFIX + name);
  const parts = fields(baseGraph).filter((f) => f.number !== GRAPH.output).map((f) => f.raw);
  for (const f of inferFields) {
    if (f.number === GRAPH.node) parts.push(field(GRAPH.node, rename(f.value, NODE_NAMES, to)));
    else if (f.number === GRAPH.initializer) parts.push(field(GRAPH.initializer, rename(f.value, new Set([TENSOR.name]), to)));
    else if (f.number === GRAPH.output) parts.push(f.raw);
  }
  for (const [name, t] of Object.entries(params)) {
    if (name === inferFeatures) throw new Error(`parameter ${name} collides with the features input`);
    parts.push(field(GRAPH.initializer, tensorProto(to(name), t)));
  }
  const model = baseRest.filter((f) => f.number !== MODEL.producer && f.number !== MODEL.metadata).map((f) => f.raw);
  model.push(field(MODEL.producer, "edgetune"));
  model.push(field(MODEL.graph, concat(parts)));
  const meta = { ...metadata };
  if (meta["edgetune.input"]) {
    const documented = inputMetadata(JSON.parse(meta["edgetune.input"]));
    meta["edgetune.input"] = documented["edgetune.input"];
    meta["edgetune.preprocessing"] ??= documented["edgetune.preprocessing"];
  }
  for (const [key, value] of Object.entries(meta)) {
    model.push(field(MODEL.metadata, concat([field(1, key), field(2, value)])));
  }
  return concat(model);
}
