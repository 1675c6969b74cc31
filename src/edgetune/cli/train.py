"""`edgetune train`: add a folder of class folders (or, for text bundles, a .csv/.jsonl
file of labelled texts, .tabular) to a profile (new files only, see .dedup), then train.
Ctrl-C stops after the current step and keeps what was reached (exit 130); a run that
trains nothing exits 1 and says why."""

from __future__ import annotations

import inspect
from pathlib import Path

import edgetune.cli.options as options
from edgetune import defaults
from edgetune.cli.dedup import Plan, plan
from edgetune.cli.interrupt import stop_on_sigint
from edgetune.cli.output import note, to_json
from edgetune.cli.progress import Bar, epoch_progress
from edgetune.cli.readable import readable, refuse_if_strict, report
from edgetune.cli.tabular import SUFFIXES, input_of, list_data, source_of
from edgetune.errors import BadInputError, EdgetuneError

__all__ = ["add_commands"]

CHUNK = 16  # samples per transaction: Ctrl-C keeps every finished chunk


def train(args) -> int:
    from edgetune.bundle import Bundle
    from edgetune.inputs import preparer_for

    bundle = Bundle.load(args.bundle)  # the data is listed before the profile is touched
    items, skipped = list_data(preparer_for(bundle.manifest["input"]), args.data)
    with _open(args, bundle) as p, stop_on_sigint(lambda: p.stop_training(timeout=0)) as sig:
        work = _prepare(args, p, items, skipped)
        _add(args, p, work, sig)
        history = [] if sig.requested else p.fit(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            early_stop=not args.no_early_stop, callback=_on_record(args, sig))
        result = _result(p, work, history, sig.requested)
    report(args, work.failures)
    return _finish(args, result)


def _open(args, bundle):
    from edgetune.runtime.personalizer import Personalizer

    extra = {}
    if args.precision is not None:
        if "precision" not in inspect.signature(Personalizer).parameters:
            raise EdgetuneError("--precision needs a runtime with precisions; this one has "
                                "only fp32: leave --precision out")
        extra["precision"] = args.precision
    return Personalizer(bundle, profile=args.profile, wait=args.wait, **extra)


def _prepare(args, p, items, skipped) -> Plan:
    """What this run adds; refuses (nothing added) under --strict with unreadable files
    (or rows) or when fewer than two classes would have samples."""
    work = plan(p.samples(), items)
    work.failures[:0] = skipped
    _, bad = readable(p.preparer, [n[0] for n in work.new] + [r[1] for r in work.relabel])
    work.drop(bad)
    refuse_if_strict(args, work.failures, len(items) + len(skipped), "nothing was added")
    labels = {s.id: s.label for s in p.samples()}
    after = {k: v for k, v in work.counts_after(p.counts(), labels).items() if v > 0}
    if len(after) < 2:
        have = ", ".join(f"{k} ({v})" for k, v in after.items()) or "no samples"
        fix = ("give rows of at least two labels" if items and not isinstance(items[0][0], Path)
               or Path(args.data).suffix.lower() in SUFFIXES
               else f"add a folder per class ({args.data}/<class>/<file>)")
        raise BadInputError(f"training needs samples of at least two classes; with "
                            f"{args.data} the profile would have {have}: {fix}. Nothing "
                            f"was added")
    return work


def _add(args, p, work: Plan, sig) -> None:
    """Add new files and relabel moved ones in chunks (one transaction each)."""
    if work.backfill:
        p.store.annotate([i for i, _ in work.backfill], sha256=[h for _, h in work.backfill])
    todo = [(path, label, sha, None) for path, label, sha in work.new]
    todo += [(path, label, sha, old) for old, path, label, sha in work.relabel]
    bar = Bar(args, len(todo), "features")
    try:
        for i in range(0, len(todo), CHUNK):
            if sig.requested:
                break
            chunk = todo[i:i + CHUNK]
            ids = p.add_samples([input_of(t[0]) for t in chunk], [t[1] for t in chunk],
                                [source_of(t[0]) for t in chunk])
            p.store.annotate(ids, sha256=[t[2] for t in chunk])
            for *_, old in chunk:
                if old is not None:
                    p.remove_sample(old)
                bar.advance()
            work.done = i + len(chunk)
    finally:
        bar.close()


def _on_record(args, sig):
    progress = epoch_progress(args, args.epochs)

    def callback(record: dict) -> None:
        sig.again()  # a Ctrl-C before fit started is not lost
        if "event" not in record and "loss" in record:
            progress.advance(record)
        elif record.get("event") == "kept":
            progress.close()
    return callback


def _result(p, work: Plan, history: list[dict], interrupted: bool) -> dict:
    epochs = [r for r in history if "event" not in r]
    events = [r for r in history if "event" in r]
    kept = next((r for r in reversed(events) if r["event"] == "kept"), None)
    checkpoints = p.checkpoints.paths()
    done = work.done
    return {"profile": str(p.profile), "samples_added": min(done, len(work.new)),
            "samples_relabelled": max(0, done - len(work.new)),
            "samples_skipped": work.skipped, "samples": len(p.store), "counts": p.counts(),
            "epochs": len(epochs), "loss": epochs[-1]["loss"] if epochs else None,
            "history": [{"epoch": r["epoch"], "loss": r["loss"]} for r in epochs],
            "events": events, "kept": kept, "interrupted": interrupted,
            "checkpoint": str(checkpoints[-1]) if checkpoints else None,
            "errors": [f.as_json() for f in work.failures]}


def _why_untrained(result: dict) -> str | None:
    """Why nothing was trained, or None when something was."""
    kept = result["kept"]
    if kept is not None and not kept.get("saved", kept.get("improved", True)):
        return kept.get("message", "no epoch improved on the parameters it started from")
    if result["epochs"] == 0:
        reasons = [e.get("message", e["event"]) for e in result["events"] if e.get("message")]
        return reasons[-1] if reasons else "no epoch finished"
    return None


def _text(result: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
    lines = [f"added {result['samples_added']} samples, skipped {result['samples_skipped']} "
             f"already stored, relabelled {result['samples_relabelled']} "
             f"({result['samples']} in the profile: {counts})"]
    if result["epochs"]:
        lines.append(f"trained {result['epochs']} epochs, last loss {result['loss']:.4f}")
    lines += [e["message"] if e["event"] == "kept" else f"{e['event']}: {e['message']}"
              for e in result["events"] if e.get("message")]
    if result["interrupted"]:
        lines.append(_interrupted_text(result))
    return "\n".join(lines)


def _interrupted_text(result: dict) -> str:
    if not result["epochs"]:
        return ("interrupted before training finished an epoch: the profile keeps its "
                "previous parameters" + (f" ({result['checkpoint']})"
                                         if result["checkpoint"] else ""))
    kept = result["kept"]
    what = kept["message"] if kept else (f"the parameters of epoch {result['epochs']} "
                                         f"(loss {result['loss']:.4f})")
    return f"interrupted: kept {what.removeprefix('kept ')}, saved in {result['checkpoint']}"


def _finish(args, result: dict) -> int:
    why = None if result["interrupted"] else _why_untrained(result)
    if why is not None and args.json:
        result = {**result, "error": f"nothing was trained: {why}", "type": "NotTrained"}
    print(to_json(result) if args.json else _text(result), flush=True)
    if result["interrupted"]:
        return 130
    if why is not None:
        if not args.json:
            note(f"edgetune train: error: nothing was trained: {why}")
        return 1
    return 0


def add_commands(add) -> None:
    p = add("train", help="add a folder of samples to a profile and train")
    p.add_argument("bundle", help="the bundle (copied into the profile the first time)")
    p.add_argument("--data", required=True, help="DIR/<class>/<file> folders; for text "
                   "bundles also FILE.csv (header with text and label columns) or "
                   "FILE.jsonl (one {\"text\", \"label\"} object a line) (required)")
    options.add_profile(p)
    p.add_argument("--epochs", type=options.epochs, default=defaults.EPOCHS,
                   help="at most this many epochs (training stops early once it has converged)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="train all --epochs even after convergence (the best are still kept)")
    p.add_argument("--batch-size", type=options.batch_size, help="samples per step "
                   "(default: 32)")
    p.add_argument("--lr", type=options.lr, help="learning rate (default: the bundle's)")
    p.add_argument("--precision", choices=("fp32", "int8"), default=None,
                   help="which base computes the features (default: the profile's recorded "
                   "precision; a new profile int8 when the bundle has an int8 base, else "
                   "fp32)")
    options.add_wait(p)
    options.add_strict(p, "nothing added")
    options.add_json(p)
    p.set_defaults(run=train)
