"""The onnxruntime sessions of an open profile: made when first needed, dropped when idle.

    sessions = ProfileSessions(bundle, "base", threads=1)
    sessions.base().run(...)          # made now (from this machine's optimized base)
    sessions.release(idle=60)         # dropped if unused for a minute; made again when asked

A profile has up to four sessions: the base (features), `infer` (answers from a trained
head, the fit's objective) and the training graphs (`train`, `train_epoch`). None is
made at open: a new profile answering from its prototypes never makes `infer` or a
training session. An idle profile need not hold them either: the EfficientNet-Lite0
base alone holds 14 MiB of weights and 10 MiB of activations, so a server with no page
open for a while releases them (server.session) and the next request makes them again
(0.03 s for the base, from the optimized form saved on this machine).

A session released while a call runs on it stays alive until that call returns (the
caller holds it); the next call gets a new one.
"""

from __future__ import annotations

import threading
import time

from edgetune.runtime.trainer import bundle_session, training_threads

__all__ = ["TRAIN_ROLES", "ProfileSessions"]

TRAIN_ROLES = ("train", "train_epoch")


class ProfileSessions:
    """The sessions of one profile's bundle, by graph role (module doc)."""

    def __init__(self, bundle, base_role: str, threads: int | None):
        self.bundle, self.base_role, self.threads = bundle, base_role, threads
        self._open: dict[str, object] = {}
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def base(self):
        """The base graph of the profile's precision (features)."""
        return self._get(self.base_role)

    def infer(self):
        """The head's forward graph: probabilities (and logits) from features."""
        return self._get("infer")

    def training(self) -> dict:
        """The training graphs the bundle has, by role (GraphTrainer's `sessions`)."""
        return {role: self._get(role) for role in TRAIN_ROLES if self.bundle.has_graph(role)}

    @property
    def roles(self) -> list[str]:
        """The roles whose sessions are open now."""
        return list(self._open)

    def release(self, idle: float = 0.0) -> list[str]:
        """Drop the sessions unused for at least `idle` seconds (all by default); the
        roles dropped."""
        now = time.monotonic()
        with self._lock:
            gone = [role for role in self._open if now - self._used[role] >= idle]
            for role in gone:
                del self._open[role]
        return gone

    def _get(self, role: str):
        with self._lock:  # one maker at a time: two threads must not build the base twice
            session = self._open.get(role)
            if session is None:
                session = self._open[role] = self._make(role)
            self._used[role] = time.monotonic()
            return session

    def _make(self, role: str):
        bundle = self.bundle
        if role == "infer":  # the trained part's forward: one thread for a head alone too
            return bundle_session(bundle, role, training_threads(bundle, self.threads),
                                  [p["infer_input"] for p in bundle.params])
        if role in TRAIN_ROLES:
            specs = bundle.params + bundle.state
            return bundle_session(bundle, role, training_threads(bundle, self.threads),
                                  [s["train_input"] for s in specs],
                                  [s["train_output"] for s in specs])
        session = bundle_session(bundle, role, self.threads, optimized=True)  # .optimized
        bundle.release(role)  # the session has its weights; export reads the file again
        return session
