"""Real text for the text tests: topic-labelled quotations from Debian's fortunes
packages (`apt-get install fortunes fortunes-min`), and the MiniLM bundle built once."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
TOPICS = ("computers", "food", "law", "medicine", "sports")
PER_CLASS = 8
HELDOUT = 40
_SESSION: dict = {}


def skip_reason() -> str | None:
    missing = [t for t in TOPICS if not (FORTUNES / t).is_file()]
    if missing:
        return (f"fortunes topic files {missing} are missing: apt-get install fortunes "
                f"fortunes-min")
    return None


def quotes(topic: str) -> list[str]:
    """The quotations of one topic file (entries separated by lines holding `%`), those
    of 20 to 400 characters."""
    text = (FORTUNES / topic).read_text(encoding="utf-8", errors="replace")
    entries = [q.strip() for q in text.split("\n%\n")]
    return [q for q in entries if 20 <= len(q) <= 400]


def split(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) (text, topic) pairs: PER_CLASS and HELDOUT quotes per topic."""
    rng = random.Random(seed)
    train, heldout = [], []
    for topic in TOPICS:
        q = quotes(topic)
        rng.shuffle(q)
        train += [(x, topic) for x in q[:PER_CLASS]]
        heldout += [(x, topic) for x in q[PER_CLASS:PER_CLASS + HELDOUT]]
    return train, heldout


def session_dir() -> Path:
    if "dir" not in _SESSION:
        _SESSION["dir"] = Path(tempfile.mkdtemp(prefix="edgetune-text-"))
    return _SESSION["dir"]


def text_bundle() -> Path:
    """The minilm (int8) bundle with a softmax head, built once per process."""
    if "bundle" not in _SESSION:
        import edgetune as et

        path = session_dir() / "text.edgetune"
        et.convert(base="minilm", head="softmax", classes=len(TOPICS),
                   cache_dir=session_dir() / "cache").save(path)
        _SESSION["bundle"] = path
    return _SESSION["bundle"]
