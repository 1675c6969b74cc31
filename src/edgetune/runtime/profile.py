"""Opening a profile's parts: its pinned bundle, its sample store and the precision of
its cached features. A read-only open creates, repairs and records nothing.

A profile is one personalization on one device: a folder holding `bundle.edgetune` (a
copy of the bundle, hard-linked where possible), `samples.sqlite` (cached features and
the class table), `checkpoints/` and `lock` (one writer at a time).
"""

from __future__ import annotations

from pathlib import Path

from edgetune.bundle import Bundle, BundleError
from edgetune.errors import BadInputError, EdgetuneError
from edgetune.runtime.store import SampleStore

__all__ = ["BASE_ROLES", "FP32", "PRECISION_META", "check_precision", "open_bundle",
           "open_precision", "open_store"]

FP32 = "fp32"
BASE_ROLES = {FP32: "base", "int8": "base_int8"}  # precision -> the base graph's role
PRECISION_META = "precision"  # the sample store's record of its features' precision


def open_bundle(profile: Path, bundle, read_only: bool) -> Bundle:
    """The profile's pinned copy of the bundle; the first open pins `bundle`."""
    copy = profile / "bundle.edgetune"
    if not read_only:
        for stale in profile.glob(".bundle.edgetune.*"):  # a copy cut short by a crash
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
    if bundle is None or (read_only and not copy.is_dir()):
        if not copy.is_dir():
            raise BundleError(f"profile {profile} has no bundle yet; pass the bundle "
                              f"the first time (edgetune train BUNDLE --profile ...)"
                              + ("; a read-only open creates nothing" if read_only else ""))
        return Bundle.load(copy, verified=True)
    if copy.is_dir():  # the bundle's manifest (its files' sha256) must be the pinned one's
        pinned = Bundle.load(copy, verified=True)
        given = bundle.manifest if isinstance(bundle, Bundle) else Bundle.read_manifest(bundle)
        if pinned.manifest != given:
            where = bundle.path if isinstance(bundle, Bundle) else bundle
            raise BundleError(f"profile {profile} was made with another bundle "
                              f"({pinned.path}); use a new profile for {where}")
        return pinned
    loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verified=True)
    loaded.save(copy)  # verified when loaded; the copy was written from the same bytes
    return loaded.at(copy)


def open_store(profile: Path, features_shape: tuple, bundle_id: str,
               read_only: bool) -> SampleStore:
    """The sample store, checked to belong to this bundle (recorded on first open)."""
    path = profile / "samples.sqlite"
    if read_only and not path.is_file():
        raise EdgetuneError(f"profile {profile} has no sample store yet; a read-only "
                            f"open creates nothing: add samples first (edgetune train ...)")
    store = SampleStore(path, feature_shape=features_shape, read_only=read_only)
    known = store.get_meta("bundle")
    if known is None and not read_only:
        store.set_meta("bundle", bundle_id)
    elif known is not None and known != bundle_id:
        store.close()
        raise BundleError(f"profile {profile} was made with another bundle; open it "
                          f"with its own bundle or use a new profile")
    return store


def check_precision(asked: str | None) -> None:
    if asked is not None and asked not in BASE_ROLES:
        raise BadInputError(f"precision is {asked!r}; it must be one of "
                            f"{sorted(BASE_ROLES)} (or None: the profile's own)")


def open_precision(profile: Path, store: SampleStore, bundle: Bundle, asked: str | None,
                   read_only: bool) -> str:
    """The profile's precision: the recorded one (profiles from before precisions were
    recorded hold fp32 features), or `asked`, recorded for a profile without samples. A
    new profile takes int8 when the bundle has an int8 base, else fp32."""
    check_precision(asked)
    recorded = store.get_meta(PRECISION_META)
    int8_default = not len(store) and bundle.has_graph(BASE_ROLES["int8"])
    current = recorded or ("int8" if int8_default else FP32)
    precision = asked or current
    if precision != current and len(store):
        raise BadInputError(
            f"profile {profile} holds {len(store)} samples whose features were "
            f"computed by the {current} base; they cannot be mixed with {precision} "
            f"features. Open it with precision {current!r} (or without a precision), use a "
            f"new profile for {precision}, or remove its samples and add them again")
    if not bundle.has_graph(BASE_ROLES[precision]):
        raise BundleError(f"precision {precision!r} needs the bundle's "
                          f"{BASE_ROLES[precision]!r} graph, which this bundle has not: "
                          f"rebuild it with `edgetune convert ...` (int8 by default) "
                          f"(convert(..., quantize=True))")
    if precision != recorded and not read_only:
        store.set_meta(PRECISION_META, precision)
    return precision
