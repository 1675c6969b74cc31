"""`edgetune listen`: detections with timestamps in a recording, for a profile of an
audio bundle, read-only (no lock, nothing created or changed)::

    edgetune listen --profile me/ kitchen.wav            # "3.10-4.60 lights 0.93" lines
    edgetune listen --profile me/ kitchen.wav --json     # {"path", "detections", ...}
    arecord -q -f S16_LE -r 16000 -c 1 | edgetune listen --profile me/ - --rate 16000

Reads files (WAV, FLAC, OGG at any rate: resampled) or headerless mono PCM on stdin
(`-`, with --rate and --encoding s16|f32). There is no microphone capture of its own:
pipe a recorder into `-` (text lines are printed as detections happen).
"""

from __future__ import annotations

import sys

import edgetune.cli.options as options
from edgetune.cli.output import emit, note

__all__ = ["add_commands"]


def listen(args) -> int:
    from edgetune.runtime.personalizer import Personalizer
    from edgetune.runtime.stream import BACKGROUND, read_raw_pcm

    with Personalizer(profile=args.profile, read_only=True, threads=args.threads) as p:
        rate = None
        source = args.input
        if args.input == "-":
            rate = args.rate or int(p.bundle.manifest["input"].get("sample_rate") or 16000)
            source = read_raw_pcm(sys.stdin.buffer, rate, args.encoding)
        detector = p.stream(source, rate=rate, hop=args.hop, smoothing=args.smoothing,
                            threshold=args.threshold, refractory=args.refractory,
                            background=args.background or BACKGROUND)
        detections = []
        for detection in detector:
            detections.append(detection)
            if not args.json:
                print(_line(detection), flush=True)
        stats = detector.stats
    result = {"path": args.input, "detections": detections, **stats}
    if args.json:
        emit(args, result, "")
    else:
        note(f"{len(detections)} detection{'s' * (len(detections) != 1)} in "
             f"{stats['audio_seconds']:.1f} s of audio ({stats['windows']} windows, real-time "
             f"factor {stats['real_time_factor']:.3f})")
    return 0


def _line(d: dict) -> str:
    return f"{d['start']:.2f}-{d['end']:.2f} {d['label']} {d['score']:.2f}"


def add_commands(add) -> None:
    from edgetune.runtime.stream import HOP, SMOOTHING, THRESHOLD

    p = add("listen", help="detections with timestamps in a recording (audio profiles)",
            description="Slide the base's window over a recording every --hop seconds, "
            "average each class's score over --smoothing windows and report a class "
            "that is not background when it crosses --threshold; then stay silent for "
            "--refractory seconds. Files or raw PCM on stdin ('-'); no microphone of its "
            "own: pipe a recorder in.")
    options.add_profile(p)
    p.add_argument("input", metavar="FILE", help="a WAV, FLAC or OGG file, or - for raw "
                   "mono PCM on stdin (see --rate, --encoding)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="smoothed score (0-1] that fires a detection")
    p.add_argument("--hop", type=float, default=HOP, help="seconds between windows")
    p.add_argument("--smoothing", type=int, default=SMOOTHING,
                   help="windows whose scores are averaged")
    p.add_argument("--refractory", type=float, default=None,
                   help="seconds without detections after one (default: one window)")
    p.add_argument("--background", action="append", metavar="CLASS",
                   help="a class that never fires; repeat for several (default: none)")
    p.add_argument("--rate", type=int, default=None,
                   help="sample rate of PCM on stdin (default: the bundle's)")
    p.add_argument("--encoding", choices=("s16", "f32"), default="s16",
                   help="PCM on stdin: 16-bit integers or 32-bit floats, little-endian")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime threads (one keeps up with live audio)")
    options.add_json(p)
    p.set_defaults(run=listen)
