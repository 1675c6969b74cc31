"""The teachable camera: a local web app that personalizes a model from the camera.

    edgetune serve [--bundle B | --audio] [--profile P] [--host 127.0.0.1] [--port 8321]
                   [--token T] [--tls-cert F --tls-key F]
    python -m edgetune.server            # the same command (what `make run` starts)

A person opens the page, adds classes, holds a button per class to record samples from
the camera (or drops image files when there is no camera), presses Train, watches the
loss fall and sees live predictions with confidence bars. Samples (as features, not
images) and the trained head persist in the profile; the personalized model downloads
as one standalone ONNX file.

With an audio bundle (input kind ``audio``, e.g. ``edgetune serve --audio``: the
speech-embedding base) the same page is a teachable microphone: per class *Hold to
record* or a countdown recording of one clip length (the background class ``none``
records several clips of room noise), Train, then *Listen* streams the microphone over
the WebSocket into a streaming detector and shows the smoothed score per class and the
detections with their times.

Defaults:

- bundle: the profile's own copy if it has one, else the default bundle
  (EfficientNet-Lite0 + softmax head, the default optimizer), built once with
  :func:`edgetune.converter.convert.convert` into ``cache_dir()/default-4.edgetune``
  (:func:`edgetune.paths.cache_dir`); with ``--audio`` (``--base speech-embedding``)
  the speech-embedding + softmax bundle ``cache_dir()/speech-1.edgetune``. Building
  needs the ``build`` extra (and ``audio`` for speech); a device with only a bundle
  does not.
- profile: :func:`edgetune.paths.default_profile` (with ``--audio``: ``speech-profile``
  beside it).
- host and port: :data:`edgetune.defaults.HOST` and :data:`~edgetune.defaults.PORT`
  (127.0.0.1:8321). Any other address than a loopback one is refused unless an access
  token is given (``--token`` or ``$EDGETUNE_TOKEN``); with a token every request
  needs it (open ``https://HOST:PORT/?token=T`` once; the page keeps it in a cookie).
- HTTPS: on a non-loopback address always (a phone's browser gives the camera only to a
  secure page), with ``--tls-cert/--tls-key`` or a self-signed certificate made once
  into ``cache_dir()/tls`` (``tls``); on loopback only with ``--tls-cert/--tls-key``.

The package's modules:

- framework-free: ``bind`` (loopback rule), ``profile`` (default bundle and profile),
  ``options`` (the command's arguments), ``launch`` (:func:`serve`);
- the web app (the ``serve`` extra: starlette, uvicorn, websockets, python-multipart):
  ``app`` (:func:`~edgetune.server.app.create_app`), ``routes``, ``live``, ``session``,
  ``intake``, ``holdout``, ``hub``, ``guard``, ``limits``, ``connections``, ``api``,
  ``testing``; ``tls`` (the ``cryptography`` package, also in the ``serve`` extra).

This module imports no web framework.
"""

from __future__ import annotations

from edgetune.defaults import HOST as DEFAULT_HOST
from edgetune.defaults import PORT as DEFAULT_PORT
from edgetune.server.bind import check_bind, is_loopback
from edgetune.server.launch import serve
from edgetune.server.profile import default_bundle, default_profile

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "check_bind",
    "default_bundle",
    "default_profile",
    "is_loopback",
    "serve",
]
