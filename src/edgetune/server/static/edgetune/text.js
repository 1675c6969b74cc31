// Kind "text": a string -> one row of token ids and attention mask for a text base,
// what the Python preparer does (src/edgetune/inputs/text.py), from the bundle's
// tokenizer.json alone, read by @huggingface/tokenizers (its browser build, served by
// `edgetune serve` under /static/tokenizers/; never a CDN):
//
//   1. read: a string, or a Blob (a .txt file: one file is one example) read as UTF-8;
//   2. whitespace: every run of (Python's) whitespace becomes one space, ends stripped;
//      an empty text is refused;
//   3. the tokenizer (normalizer, pre-tokenizer, WordPiece, post-processor) and
//      truncation to max_length tokens as the Rust `tokenizers` library does it: the
//      text's own tokens are cut to max_length minus the special tokens, then the
//      post-processor adds those (a truncated row still ends with [SEP]): `truncated`;
//   4. padding to max_length with the id of [PAD] (0 without one); the mask is 1 on
//      real tokens.
//
// @huggingface/tokenizers neither truncates nor pads, hence 3-4 here
// (tests/js/text_tokens.mjs is the same port, checked in Node).

import { EdgetuneError, fetchVerified } from "./manifest.js";

export const TOKENIZERS_URL = new URL("../tokenizers/tokenizers.min.mjs", import.meta.url).href;
export const MAX_CHARS = 1 << 20;

// Python's str.isspace() set, which the preparer's `\s+` matches (JavaScript's `\s` lacks
// \x1c-\x1f and \x85 and adds \ufeff).
const PY_SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;

/** normalize_text in Python: runs of whitespace -> one space, ends stripped. */
export function normalizeText(text) {
  return text.replace(PY_SPACE, " ").replace(/^ | $/g, "");
}

export class TextTokens {
  /** tokenizerJson: the parsed tokenizer.json; maxLength: the manifest's input.max_length. */
  constructor(Tokenizer, tokenizerJson, maxLength) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
    this.maxLength = maxLength;
    this.padId = this.tokenizer.token_to_id("[PAD]") ?? 0;
    this.added = this.tokenizer.encode("a").ids.length
      - this.tokenizer.encode("a", { add_special_tokens: false }).ids.length;
  }

  /** The bundle's tokenizer: tokenizer.json fetched (sha256 checked) and read. */
  static async load(bundle, spec, url = TOKENIZERS_URL) {
    const maxLength = Number(spec.max_length ?? spec.shape?.[1]);
    if (!(Number.isInteger(maxLength) && maxLength > 0)) {
      throw new EdgetuneError("manifest.json: input.max_length of a text bundle must be a number of tokens",
        "bad_bundle");
    }
    const name = spec.tokenizer ?? "tokenizer.json";
    const entry = Object.values(bundle.manifest.files ?? {}).find((f) => f?.file === name);
    if (!entry) throw new EdgetuneError(`the bundle has no ${name} in its manifest's files`, "bad_bundle");
    let module;
    try {
      module = await import(url);
    } catch (error) {
      throw new EdgetuneError(`@huggingface/tokenizers is not available at ${url} (${error.message}); `
        + "install it with `make run` on a machine with npm", "tokenizers_missing");
    }
    let json;
    try {
      json = JSON.parse(new TextDecoder().decode(await fetchVerified(bundle, entry, `files.${name}`)));
      return new TextTokens(module.Tokenizer, json, maxLength);
    } catch (error) {
      if (error instanceof EdgetuneError) throw error;
      throw new EdgetuneError(`${name} is not a tokenizers file (${error.message})`, "bad_bundle");
    }
  }

  /** The normalized text of a string or a .txt Blob (steps 1-2). */
  static async read(source) {
    let text = source;
    let name = "text";
    if (typeof Blob !== "undefined" && source instanceof Blob) {
      name = source.name ? `text file ${JSON.stringify(source.name)}` : "text file";
      if (source.size > 4 * MAX_CHARS) throw new EdgetuneError(`${name} is larger than ${4 * MAX_CHARS} bytes`, "bad_input");
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(await source.arrayBuffer());
      } catch (error) {
        throw new EdgetuneError(`${name} is not UTF-8 text (${error.message})`, "bad_input");
      }
    }
    if (typeof text !== "string") {
      throw new EdgetuneError("cannot read a text from this value; pass a string or a .txt file (Blob)", "bad_input");
    }
    if (text.length > MAX_CHARS) {
      throw new EdgetuneError(`${name}: ${text.length} characters is longer than the limit of ${MAX_CHARS}`, "bad_input");
    }
    const normalized = normalizeText(text);
    if (!normalized) throw new EdgetuneError(`${name} is empty (only whitespace); give a text with words`, "bad_input");
    return normalized;
  }

  /** {ids, mask: BigInt64Array [maxLength], truncated} of one text (steps 1-4). */
  async encode(source) {
    const text = await TextTokens.read(source);
    let { ids } = this.tokenizer.encode(text);
    let truncated = false;
    if (ids.length > this.maxLength) {
      truncated = true;
      const own = this.tokenizer.encode(text, { add_special_tokens: false }).tokens
        .slice(0, this.maxLength - this.added);
      const post = this.tokenizer.post_processor;
      const tokens = post ? post.post_process(own, null, true).tokens : own;
      ids = tokens.map((t) => this.tokenizer.token_to_id(t));
    }
    const out = { ids: new BigInt64Array(this.maxLength).fill(BigInt(this.padId)),
      mask: new BigInt64Array(this.maxLength), truncated };
    ids.forEach((id, i) => { out.ids[i] = BigInt(id); out.mask[i] = 1n; });
    return out;
  }
}
