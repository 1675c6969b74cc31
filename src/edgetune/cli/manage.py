"""The profile is not add-only: `edgetune samples|classes|checkpoints ...` list (read-only)
and change (one writer: --wait) what a profile holds."""

from __future__ import annotations

import datetime

import edgetune.cli.options as options
from edgetune.cli.output import emit, size

__all__ = ["add_commands"]


def _open(args, read_only: bool):
    from edgetune.runtime.personalizer import Personalizer

    if read_only:
        return Personalizer(profile=args.profile, read_only=True)
    return Personalizer(profile=args.profile, wait=args.wait)


def _keep_columns(p) -> None:
    """A trained head's class columns follow a rename or removal into a checkpoint, so
    the next open finds them under their new names."""
    if p.trained:
        p.save()


# -- samples --
def samples_list(args) -> int:
    with _open(args, read_only=True) as p:
        rows = [vars(s) for s in p.samples() if args.class_name in (None, s.label)]
    lines = [f"{r['id']:6d}  {r['label']:16s} {r['created_at']}  {r['source'] or ''}"
             for r in rows]
    emit(args, rows, "\n".join(lines) if lines else "no samples")
    return 0


def samples_remove(args) -> int:
    with _open(args, read_only=False) as p:
        for sample_id in args.ids:
            p.remove_sample(sample_id)
        counts = p.counts()
    emit(args, {"removed": args.ids, "counts": counts},
         f"removed {len(args.ids)} samples; {_counts(counts)}")
    return 0


# -- classes --
def classes_list(args) -> int:
    with _open(args, read_only=True) as p:
        counts = p.counts()
        trained = p.trained
    rows = [{"name": name, "samples": n} for name, n in counts.items()]
    emit(args, {"classes": rows, "trained": trained},
         "\n".join(f"{r['name']:20s} {r['samples']}" for r in rows) or "no classes")
    return 0


def classes_rename(args) -> int:
    with _open(args, read_only=False) as p:
        p.rename_class(args.old, args.new)
        _keep_columns(p)
        counts = p.counts()
    emit(args, {"renamed": [args.old, args.new], "counts": counts},
         f"renamed {args.old} to {args.new}; {_counts(counts)}")
    return 0


def classes_remove(args) -> int:
    with _open(args, read_only=False) as p:
        n = p.counts().get(args.name.strip(), 0)
        p.remove_class(args.name)
        _keep_columns(p)
        counts = p.counts()
    emit(args, {"removed": args.name, "samples_removed": n, "counts": counts},
         f"removed class {args.name} and its {n} samples; {_counts(counts)}")
    return 0


def _counts(counts: dict) -> str:
    return "classes: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none")


# -- checkpoints --
def checkpoints_list(args) -> int:
    with _open(args, read_only=True) as p:
        entries = p.checkpoints.entries()
    rows = [_checkpoint_row(e) for e in entries]
    emit(args, rows, "\n".join(_checkpoint_line(r) for r in rows) or "no checkpoints")
    return 0


def _checkpoint_row(entry: dict) -> dict:
    import json

    meta = entry["meta"]
    mtime = entry["path"].stat().st_mtime
    return {"number": entry["number"], "path": str(entry["path"]), "bytes": entry["bytes"],
            "saved_at": datetime.datetime.fromtimestamp(mtime).isoformat(timespec="seconds"),
            "verified": entry["verified"], "trained": meta.get("trained") == "1",
            "classes": json.loads(meta.get("classes", "[]")), "error": entry.get("error")}


def _checkpoint_line(row: dict) -> str:
    state = "ok" if row["verified"] else f"DAMAGED ({row['error']})"
    return (f"{row['number']:4d}  {row['saved_at']}  {size(row['bytes']):>9s}  "
            f"{'trained' if row['trained'] else 'untrained'}  "
            f"{', '.join(row['classes'])}  {state}")


def checkpoints_restore(args) -> int:
    with _open(args, read_only=False) as p:
        path = p.checkpoints.restore(args.number)
    emit(args, {"restored": args.number, "path": str(path)},
         f"checkpoint {args.number} is the newest again: {path}")
    return 0


# -- arguments --
def _action(group, name: str, help: str, run, read_only: bool):
    p = group.add_parser(name, help=help, formatter_class=options.DefaultsFormatter)
    options.add_profile(p)
    if not read_only:
        options.add_wait(p)
    options.add_json(p)
    p.set_defaults(run=run)
    return p


def _group(add, name: str, help: str):
    p = add(name, help=help)
    return p.add_subparsers(dest="action", required=True, metavar="ACTION")


def add_commands(add) -> None:
    group = _group(add, "samples", "list or remove a profile's samples")
    p = _action(group, "list", "the samples: id, class, when, source file", samples_list, True)
    p.add_argument("--class", dest="class_name", help="only this class (default: all)")
    p = _action(group, "remove", "remove samples by id", samples_remove, False)
    p.add_argument("ids", nargs="+", type=int, metavar="ID", help="sample ids (samples list)")

    group = _group(add, "classes", "list, rename or remove a profile's classes")
    _action(group, "list", "the classes and their sample counts", classes_list, True)
    p = _action(group, "rename", "rename a class; its samples and trained column stay",
                classes_rename, False)
    p.add_argument("old", help="the class to rename")
    p.add_argument("new", help="its new name")
    p = _action(group, "remove", "remove a class and its samples", classes_remove, False)
    p.add_argument("name", help="the class to remove")

    group = _group(add, "checkpoints", "list a profile's checkpoints or restore one")
    _action(group, "list", "the checkpoints, oldest first", checkpoints_list, True)
    p = _action(group, "restore", "make an older checkpoint the newest again (deletes "
                "nothing)", checkpoints_restore, False)
    p.add_argument("number", type=int, help="its number (checkpoints list)")


