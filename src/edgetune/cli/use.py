"""Using a trained profile, read-only (no lock, nothing created or changed):
`edgetune eval`, `edgetune predict`, `edgetune export`."""

from __future__ import annotations

import edgetune.cli.options as options
from edgetune.cli.failures import output_file, writing
from edgetune.cli.output import emit, size
from edgetune.cli.readable import readable, refuse_if_strict, report
from edgetune.cli.tabular import Row, input_of, list_data
from edgetune.errors import BadInputError

__all__ = ["add_commands"]

BATCH = 16  # inputs per prediction call
OPEN_SET_FIELDS = ("unknown", "class", "distance", "threshold")  # runtime/openset.py


def _reader(args):
    from edgetune.runtime.personalizer import Personalizer

    return Personalizer(profile=args.profile, read_only=True)


def _predict(p, paths, open_set: bool | None = None) -> list[dict]:
    """open_set: True asks for open-set answers; None leaves it to the profile."""
    results = []
    for i in range(0, len(paths), BATCH):
        results += p.predict_many([input_of(path) for path in paths[i:i + BATCH]], open_set)
    return results


def _open_set(args) -> bool | None:
    return True if getattr(args, "open_set", False) else None


def evaluate(args) -> int:
    from edgetune.runtime.openset import BACKGROUND

    with _reader(args) as p:
        items, skipped = list_data(p.preparer, args.data)
        known = set(p.classes())
        unknown = sorted({c for _, c in items if c not in known})
        usable = [(path, c) for path, c in items if c in known]
        good, bad = readable(p.preparer, [path for path, _ in usable])
        bad[:0] = skipped
        refuse_if_strict(args, bad, len(usable) + len(skipped), "nothing was scored")
        if not good:
            raise BadInputError(f"{args.data}: no readable file of a class this profile knows "
                                f"({', '.join(sorted(known))}); classes of the data it does "
                                f"not know: {', '.join(unknown) or 'none'}")
        truth = dict(usable)
        predicted = _predict(p, good, _open_set(args))
        if args.open_set:  # files of classes it does not know should be answered unknown
            unrelated, bad_unrelated = readable(p.preparer, [path for path, c in items
                                                              if c not in known])
            rejected = sum(r["unknown"] or r["label"] == BACKGROUND  # a detector's "none"
                           for r in _predict(p, unrelated, True))
            bad += bad_unrelated
    result = _score([truth[path] for path in good], [r["label"] for r in predicted])
    result["skipped_classes"] = unknown
    result["skipped_files"] = sum(c in unknown for _, c in items)
    if args.open_set:
        for path, r in zip(good, predicted):
            entry = result["per_class"][truth[path]]
            entry["unknown"] = entry.get("unknown", 0) + r["unknown"]
        result["open_set"] = {"unknown": sum(r["unknown"] for r in predicted),
                              "unrelated": len(unrelated), "rejected": rejected}
    result["errors"] = [f.as_json() for f in bad]
    emit(args, result, _eval_text(result, "files" if not items or not isinstance(
        items[0][0], Row) else "rows"))
    report(args, bad)
    return 0


def _score(truths: list[str], labels: list[str]) -> dict:
    per_class: dict[str, dict] = {}
    for truth, label in zip(truths, labels):
        entry = per_class.setdefault(truth, {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += label == truth
    for entry in per_class.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    correct = sum(e["correct"] for e in per_class.values())
    return {"accuracy": correct / len(truths), "n": len(truths), "per_class": per_class}


def _eval_text(result: dict, noun: str = "files") -> str:
    lines = [f"accuracy {result['accuracy']:.3f} on {result['n']} {noun}"]
    for name, entry in result["per_class"].items():
        lines.append(f"  {name:20s} {entry['accuracy']:.3f} ({entry['correct']}/{entry['n']})"
                     + (f", {entry['unknown']} unknown" if "unknown" in entry else ""))
    if "open_set" in result:
        o = result["open_set"]
        lines.append(f"open set: {o['unknown']} of {result['n']} {noun} of known classes "
                     f"answered unknown; {o['rejected']} of {o['unrelated']} {noun} of other "
                     f"classes answered unknown")
    if result["skipped_classes"]:
        lines.append(f"not scored: the profile does not know these classes of the data "
                     f"({result['skipped_files']} {noun}): {', '.join(result['skipped_classes'])}")
    return "\n".join(lines)


def predict(args) -> int:
    """Every readable input is answered, in order; unreadable ones get {"path", "error"}
    (texts: {"text", "error"}) in the JSON list and a line on stderr. Exit 0 if at least
    one was answered."""
    with _reader(args) as p:
        inputs = _inputs(args, p.preparer)
        good, bad = readable(p.preparer, inputs)
        refuse_if_strict(args, bad, len(inputs), "nothing was predicted")
        answers = dict(zip(good, _predict(p, good, _open_set(args))))
    errors = {f.path: f.reason for f in bad}
    fields = ("label", "scores", *OPEN_SET_FIELDS, "truncated")
    results = [{**_key(item), **{k: answers[item][k] for k in fields if k in answers[item]}}
               if item in answers else {**_key(item), "error": errors[str(item)]}
               for item in inputs]
    lines = [_answer_text(r) for r in results if "label" in r]
    emit(args, results, "\n".join(lines))
    report(args, bad)
    return 0 if answers else 1


def _inputs(args, preparer) -> list:
    """The INPUTs in order (`-` replaced by the lines of stdin), then the --text values.
    Texts (stdin lines, --text) are Rows; files stay paths."""
    import sys

    texts = args.texts or []
    if (texts or "-" in args.inputs) and preparer.kind != "text":
        raise BadInputError(f"{'--text' if texts else '- (stdin)'} is for text bundles; "
                            f"this profile's bundle takes {preparer.noun}s: give files")
    if not args.inputs and not texts:
        raise BadInputError("nothing to predict: give INPUT files"
                            + (", --text TEXT or - (one text a line on stdin)"
                               if preparer.kind == "text" else ""))
    inputs: list = []
    for item in args.inputs:
        if item != "-":
            inputs.append(item)
            continue
        lines = sys.stdin.read().splitlines()
        inputs += [Row(line, f"stdin:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    inputs += [Row(text, f"--text {n}") for n, text in enumerate(texts, 1)]
    if not inputs:
        raise BadInputError("nothing to predict: stdin held no text (one text a line)")
    return inputs


def _key(item) -> dict:
    return {"text": item.text} if isinstance(item, Row) else {"path": item}


def _answer_text(r: dict) -> str:
    if "path" not in r:  # a text: named by its words (shortened)
        text = " ".join(r["text"].split())
        r = {**r, "path": text if len(text) <= 60 else text[:57] + "..."}
    if "unknown" not in r:
        return f"{r['path']}: {r['label']} ({r['scores'][r['label']]:.3f})"
    distance, threshold = r["distance"], r["threshold"]
    why = ("no threshold" if threshold is None or distance is None else
           f"distance {distance:.3f} {'>' if r['unknown'] else '<='} {threshold:.3f}")
    if r["unknown"]:
        return f"{r['path']}: {r['label']} (nearest {r['class']}, {why})"
    return f"{r['path']}: {r['label']} ({r['scores'][r['label']]:.3f}, {why})"


def export(args) -> int:
    output = output_file(args.output)
    with _reader(args) as p, writing(output):
        path = p.export(output)
        classes = p.classes()
        text = p.preparer.kind == "text"
    nbytes = path.stat().st_size
    result = {"path": str(path), "bytes": nbytes, "classes": classes}
    message = f"wrote {path} ({size(nbytes)}), classes {', '.join(classes)}"
    if text:  # its tokenizer is written beside it (runtime.export.tokenizer_path)
        from edgetune.runtime.export import tokenizer_path

        result["tokenizer"] = str(tokenizer_path(path))
        message += f"\nwrote {result['tokenizer']} (the tokenizer: tokenizers.Tokenizer.from_file)"
    emit(args, result, message)
    return 0


def add_commands(add) -> None:
    p = add("eval", help="accuracy of a profile on a folder of class folders")
    options.add_profile(p)
    p.add_argument("--data", required=True, help="DIR/<class>/<file> folders; for text "
                   "profiles also FILE.csv (header with text and label columns) or "
                   "FILE.jsonl (one {\"text\", \"label\"} object a line) (required)")
    options.add_strict(p, "nothing scored")
    p.add_argument("--open-set", action="store_true",
                   help="answer 'unknown' for inputs far from every class (calibrated "
                        "from the profile's samples); reports how many were, and how many "
                        "files of classes the profile does not know were")
    options.add_json(p)
    p.set_defaults(run=evaluate)

    p = add("predict", help="classify inputs with a profile")
    options.add_profile(p)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files to classify; for a "
                   "text profile, - reads texts from stdin, one a line (blank lines skipped)")
    p.add_argument("--text", dest="texts", action="append", metavar="TEXT",
                   help="a text to classify (text profiles; repeat for more; answered after "
                   "the INPUTs, as {\"text\", \"label\", \"scores\"} with --json)")
    options.add_strict(p, "nothing predicted")
    p.add_argument("--open-set", action="store_true",
                   help="answer 'unknown' (or 'none' in a profile with a 'none' class) for "
                        "inputs far from the class picked, with the distance and threshold")
    options.add_json(p)
    p.set_defaults(run=predict)

    p = add("export", help="write one standalone ONNX model")
    options.add_profile(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write "
                   "(required; its folder must exist); a text model's tokenizer goes "
                   "beside it, NAME.tokenizer.json")
    options.add_json(p)
    p.set_defaults(run=export)
