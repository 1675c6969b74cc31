"""Accuracy of a profile on a folder of class folders (DIR/<class>/<file>)."""

from __future__ import annotations

import os

from edgetune.errors import BadInputError

__all__ = ["evaluate_folder"]

BATCH = 4  # inputs per base call, as the Personalizer adds them


def evaluate_folder(p, data_dir: str | os.PathLike) -> dict:
    """{"accuracy", "n", "per_class", "skipped_classes"} of Personalizer `p` on the files
    its preparer takes from `data_dir`; folders of classes `p` does not know are skipped
    and named."""
    items = p.preparer.list_folder(data_dir)
    known = set(p.classes())
    usable = [(path, c) for path, c in items if c in known]
    unknown = sorted({c for _, c in items if c not in known})
    if not usable:
        raise BadInputError(f"{data_dir}: none of its class folders {unknown} is a class of "
                            f"this profile ({sorted(known)})")
    per_class: dict[str, dict] = {}
    correct = 0
    for i in range(0, len(usable), BATCH):
        chunk = usable[i:i + BATCH]
        for (_, truth), result in zip(chunk, p.predict_many([path for path, _ in chunk])):
            entry = per_class.setdefault(truth, {"n": 0, "correct": 0})
            entry["n"] += 1
            entry["correct"] += result["label"] == truth
            correct += result["label"] == truth
    for entry in per_class.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    return {"accuracy": correct / len(usable), "n": len(usable), "per_class": per_class,
            "skipped_classes": unknown}
