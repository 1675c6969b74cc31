// onnxruntime-web (wasm backend), loaded from the server's own files (/static/ort/,
// installed from npm by the Makefile): never a CDN, so the page works offline.

import { EdgetuneError } from "./manifest.js";

export const ORT_URL = new URL("../ort/ort.wasm.min.mjs", import.meta.url).href;

let loading = null;

/**
 * The onnxruntime-web module, configured once per realm (page or worker): wasm files
 * next to `url`, `threads` wasm threads (more than 1 needs a cross-origin isolated
 * page: SharedArrayBuffer).
 */
export function loadOrt({ url = ORT_URL, threads = 1 } = {}) {
  loading ??= (async () => {
    let ort;
    try {
      ort = await import(url);
    } catch (error) {
      throw new EdgetuneError(`onnxruntime-web is not available at ${url} (${error.message}); `
        + "install it with `make run` on a machine with npm", "ort_missing");
    }
    ort.env.wasm.wasmPaths = new URL("./", url).href;
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.max(1, threads) : 1;
    ort.env.wasm.proxy = false;
    ort.env.logLevel = "error";
    return ort;
  })();
  return loading;
}

/** A wasm session for a graph's bytes. */
export async function session(ort, bytes, where) {
  try {
    return await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all",
    });
  } catch (error) {
    throw new EdgetuneError(`${where} cannot be loaded by onnxruntime-web: ${error.message}`, "bad_bundle");
  }
}

/** Check that a session has the tensors a graph's manifest entry names. */
export function checkNames(s, graph, role, inputs = [], outputs = []) {
  const missing = [...new Set([...Object.values(graph.inputs), ...inputs])].filter((n) => !s.inputNames.includes(n))
    .concat([...new Set([...Object.values(graph.outputs), ...outputs])].filter((n) => !s.outputNames.includes(n)));
  if (missing.length) {
    throw new EdgetuneError(`graph ${role} has no tensors ${JSON.stringify(missing)} that its manifest names; `
      + "rebuild the bundle", "bad_bundle");
  }
}
