// A text bundle's input rows in JavaScript: what edgetune's Python preparer
// (src/edgetune/inputs/text.py) makes of a text, from the bundle's tokenizer.json alone,
// read by @huggingface/tokenizers (docs/bundle-format.md, "Preparing text"):
//
//   1. whitespace: every run of (Python's) whitespace becomes one space, ends stripped;
//      an empty text is refused;
//   2. the tokenizer (normalizer, pre-tokenizer, WordPiece, post-processor: [CLS] ... [SEP]);
//   3. truncation to max_length tokens as the Rust `tokenizers` library does it: the text's
//      own tokens are cut to max_length minus the special tokens, then the post-processor
//      adds those (a truncated row still ends with [SEP]);
//   4. padding to max_length with the tokenizer's pad id; the mask is 1 on real tokens.
//
// @huggingface/tokenizers reads tokenizer.json but neither truncates nor pads, hence 3-4.

import { Tokenizer } from "@huggingface/tokenizers";

// Python's str.isspace() set, which the preparer's `\s+` matches (JavaScript's `\s` lacks
// \x1c-\x1f and \x85 and adds \ufeff).
const PY_SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;

export function normalizeText(text) {
  return text.replace(PY_SPACE, " ").replace(/^ | $/g, "");
}

export class TextTokens {
  /** tokenizerJson: the parsed tokenizer.json; maxLength: the manifest's input.max_length. */
  constructor(tokenizerJson, maxLength) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
    this.maxLength = maxLength ?? tokenizerJson.truncation?.max_length;
    if (!(this.maxLength > 0)) throw new Error("the text bundle names no max_length");
    this.padId = tokenizerJson.padding?.pad_id ?? this.tokenizer.token_to_id("[PAD]") ?? 0;
    const one = this.tokenizer.encode("a");
    this.added = one.ids.length - this.tokenizer.encode("a", { add_special_tokens: false })
      .ids.length;
  }

  /** {ids, attentionMask: number[maxLength], truncated: boolean} of one text. */
  encode(text) {
    const normalized = normalizeText(String(text));
    if (!normalized) throw new Error("the text is empty (only whitespace)");
    let { ids } = this.tokenizer.encode(normalized);
    let truncated = false;
    if (ids.length > this.maxLength) {
      truncated = true;
      const own = this.tokenizer.encode(normalized, { add_special_tokens: false }).tokens
        .slice(0, this.maxLength - this.added);
      const post = this.tokenizer.post_processor;
      const tokens = post ? post.post_process(own, null, true).tokens : own;
      ids = tokens.map((t) => this.tokenizer.token_to_id(t));
    }
    const attentionMask = ids.map(() => 1);
    while (ids.length < this.maxLength) {
      ids.push(this.padId);
      attentionMask.push(0);
    }
    return { ids, attentionMask, truncated };
  }
}
