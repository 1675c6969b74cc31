// Reading a bundle over HTTP, knowing only its manifest (docs/bundle-format.md): the
// manifest, every file it names checked against its sha256 with Web Crypto before
// use, and the safetensors of the initial parameters.

export const FORMAT = "edgetune.bundle";
export const VERSION = 1;

/** An error of edgetune.js: `code` says what kind (bad_bundle, bad_input, ...). */
export class EdgetuneError extends Error {
  constructor(message, code = "error") {
    super(message);
    this.name = "EdgetuneError";
    this.code = code;
  }
}

export const product = (shape) => shape.reduce((a, b) => a * b, 1);

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

/** The sha256 of some bytes as lowercase hex (Web Crypto: a secure context). */
export async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new EdgetuneError("Web Crypto is not available: open the page over https:// or on "
      + "localhost (a browser gives crypto.subtle only to a secure origin)", "insecure_origin");
  }
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

function plainName(name, where) {
  if (typeof name !== "string" || name === "" || /[/\\]/.test(name) || name.startsWith(".")) {
    throw new EdgetuneError(`${where}: ${JSON.stringify(name)} is not a plain file name inside `
      + "the bundle", "bad_bundle");
  }
  return name;
}

async function get(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (error) {
    throw new EdgetuneError(`cannot fetch ${what} from ${url}: ${error.message}`, "network");
  }
  if (!response.ok) {
    throw new EdgetuneError(`${what}: ${url} answered ${response.status}`, "network");
  }
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * The bundle at `url` (a folder URL ending in "/"): {url, manifest, id}. `id` is the
 * sha256 of the manifest's bytes: a profile remembers which bundle it was made with.
 */
export async function openBundle(url) {
  const base = new URL(url, globalThis.location?.href);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  const bytes = await get(new URL("manifest.json", base), "the bundle's manifest");
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    throw new EdgetuneError(`${base}manifest.json is not JSON: ${error.message}`, "bad_bundle");
  }
  if (manifest?.format !== FORMAT) {
    throw new EdgetuneError(`${base} is not an edgetune bundle (format ${JSON.stringify(manifest?.format)})`,
      "bad_bundle");
  }
  if (!(Number.isInteger(manifest.version) && manifest.version >= 1)) {
    throw new EdgetuneError(`bundle version ${manifest.version} is not a version`, "bad_bundle");
  }
  if (manifest.version > VERSION) {
    throw new EdgetuneError(`bundle format version ${manifest.version} is newer than this reader `
      + `(${VERSION}); update edgetune`, "bad_bundle");
  }
  const kind = manifest.input?.kind ?? "image";
  if (!["image", "audio", "text", "tensor"].includes(kind)) {
    throw new EdgetuneError(`input kind ${JSON.stringify(kind)}: edgetune.js personalizes image, audio `
      + "and text bundles (and raw tensors)", "bad_bundle");
  }
  for (const role of ["base", "train", "infer"]) {
    if (!manifest.graphs?.[role]) {
      throw new EdgetuneError(`the manifest has no graph ${role}`, "bad_bundle");
    }
  }
  return { url: base.href, manifest, id: await sha256Hex(bytes) };
}

/** The bytes of a file the manifest names (`entry`: {file, sha256}), verified. */
export async function fetchVerified(bundle, entry, where) {
  const name = plainName(entry?.file, where);
  const bytes = await get(new URL(name, bundle.url), where);
  const digest = await sha256Hex(bytes);
  if (digest !== entry.sha256) {
    throw new EdgetuneError(`${where}: the sha256 of ${name} is ${digest}, the manifest says `
      + `${entry.sha256}; the bundle is damaged or was replaced: reload the page`, "bad_bundle");
  }
  return bytes;
}

/** Parse safetensors: {name: {shape, data: Float32Array}} (F32 tensors). */
export function parseSafetensors(bytes, where) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 8) throw new EdgetuneError(`${where}: too short for safetensors`, "bad_bundle");
  const headerLength = Number(view.getBigUint64(0, true));
  if (8 + headerLength > bytes.byteLength) {
    throw new EdgetuneError(`${where}: the safetensors header runs past the end`, "bad_bundle");
  }
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const start = 8 + headerLength;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = info.data_offsets;
    if (info.dtype !== "F32") {
      throw new EdgetuneError(`${where}: ${name} has dtype ${info.dtype}; expected F32`, "bad_bundle");
    }
    if (end - begin !== 4 * product(info.shape) || start + end > bytes.byteLength) {
      throw new EdgetuneError(`${where}: ${name}'s data does not fit its shape`, "bad_bundle");
    }
    const data = new Float32Array(product(info.shape));
    for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(start + begin + 4 * i, true);
    tensors[name] = { shape: info.shape, data };
  }
  return tensors;
}
