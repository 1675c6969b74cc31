// A text bundle's input rows in Node: the browser runtime's own text preparer
// (src/edgetune/server/static/edgetune/text.js: whitespace as Python's, the tokenizer,
// truncation as the Rust `tokenizers` library does it, padding with [PAD]), given
// @huggingface/tokenizers from this folder's node_modules instead of the page's copy.
// One port of the Python preparer (src/edgetune/inputs/text.py), checked here in Node
// and in Chromium by tests/server/test_tab_text.py.

import { Tokenizer } from "@huggingface/tokenizers";

import { TextTokens as TabTextTokens } from "../../src/edgetune/server/static/edgetune/text.js";

export class TextTokens extends TabTextTokens {
  /** tokenizerJson: the parsed tokenizer.json; maxLength: the manifest's input.max_length. */
  constructor(tokenizerJson, maxLength) {
    super(Tokenizer, tokenizerJson, maxLength);
  }
}
