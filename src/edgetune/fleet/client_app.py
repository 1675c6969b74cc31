"""The Flower ClientApp: one edgetune device.

    flower-supernode --insecure --superlink 127.0.0.1:9092 \
        --node-config 'profile="/path/to/profile" local-epochs=1'

Each message opens the device (`ProfileDevice`: the profile, with its lock) and closes
it after: `query` answers the device's class names; `train` receives the global
parameters (arrays in manifest order; the fleet's class vocabulary and the bundle's
identity in the config), trains E local epochs (edgetune.fleet.device) and replies with
the new arrays, its number of training samples and metrics; `evaluate` scores the
global head on the device's held-out samples and makes it the profile's own.

Flower's privacy mods run when the server asks for them: `secaggplus_mod` (the server
runs SecAgg+) and `fixedclipping_mod` (client-side clipping of differential privacy);
otherwise they step aside. Node config `audit="FILE"` appends one JSON line per message
that leaves the device: every array's name, shape and dtype, every metric's and config
entry's name: what the device disclosed, checkable by anyone.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from flwr.app import Context, Message, MessageType
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from edgetune.fleet.device import ProfileDevice

__all__ = ["EdgetuneClient", "app", "make_client_app", "message_summary"]

CLIPPING_KEY = "clipping_norm"  # what DifferentialPrivacyClientSideFixedClipping sends


class EdgetuneClient(NumPyClient):
    """Flower's NumPyClient over a device (ProfileDevice or ShardDevice)."""

    def __init__(self, device, local_epochs: int = 1, seed: int = 0):
        self.device, self.local_epochs, self.seed = device, int(local_epochs), seed

    def _check(self, config) -> list[str]:
        if config.get("bundle") and config["bundle"] != self.device.bundle_id():
            raise ValueError("this device's profile was made with another bundle than the "
                             "fleet's; join with a profile of the server's bundle")
        return json.loads(str(config["classes"]))

    def get_properties(self, config):
        return {"classes": json.dumps(self.device.classes())}

    def fit(self, parameters, config):
        classes = self._check(config)
        epochs = int(config.get("local-epochs", self.local_epochs) or self.local_epochs)
        seed = self.seed + int(config.get("server-round", 0))
        result = self.device.train(parameters, classes, epochs,
                                   proximal_mu=float(config.get("proximal_mu", 0.0)), seed=seed)
        return result.arrays, result.samples, result.metrics

    def evaluate(self, parameters, config):
        classes = self._check(config)
        loss, n, metrics = self.device.evaluate(parameters, classes)
        return float(loss), int(n), metrics


def _array(arr) -> dict:
    """An array's shape, dtype and size on the wire (a legacy array is an .npy blob)."""
    if arr.dtype or arr.shape:
        shape, dtype = list(arr.shape), arr.dtype
    else:
        value = bytes_to_ndarray(arr.data)
        shape, dtype = list(value.shape), str(value.dtype)
    return {"shape": shape, "dtype": dtype, "bytes": len(arr.data)}


def message_summary(msg: Message, direction: str) -> dict:
    """What a message carries, without its values: array names, shapes, dtypes and sizes,
    and the names (and kinds) of its metrics and config entries."""
    content = msg.content
    return {
        "direction": direction, "type": msg.metadata.message_type,
        "arrays": {key: {name: _array(arr) for name, arr in record.items()}
                   for key, record in content.array_records.items()},
        "metrics": {key: sorted(record) for key, record in content.metric_records.items()},
        "config": {key: {k: type(v).__name__ for k, v in record.items()}
                   for key, record in content.config_records.items()},
    }


def _audit(msg: Message, ctx: Context, call_next):
    path = ctx.node_config.get("audit")
    reply = call_next(msg, ctx)
    if path and not reply.has_error():
        with open(str(path), "a", encoding="utf-8") as f:
            f.write(json.dumps(message_summary(reply, "sent")) + "\n")
    return reply


def _secure(msg: Message, ctx: Context, call_next):
    """SecAgg+ only when the server runs it (its stage configs are in the message)."""
    if msg.metadata.message_type == MessageType.TRAIN and \
            RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctx, call_next)
    return call_next(msg, ctx)


def _clipped(msg: Message, ctx: Context, call_next):
    """Client-side clipping only when the server's DP wrapper sends a clipping norm."""
    if msg.metadata.message_type == MessageType.TRAIN and any(
            CLIPPING_KEY in record for record in msg.content.config_records.values()):
        return fixedclipping_mod(msg, ctx, call_next)
    return call_next(msg, ctx)


def make_client_app(device_for: Callable[[Context], object]) -> ClientApp:
    """A ClientApp whose device for a message comes from `device_for(context)`."""

    def client_fn(context: Context):
        epochs = int(context.node_config.get("local-epochs", 1))
        seed = int(context.node_config.get("partition-id", 0))
        return EdgetuneClient(device_for(context), epochs, seed).to_client()

    return ClientApp(client_fn=client_fn, mods=[_audit, _secure, _clipped])


def _profile_device(context: Context) -> ProfileDevice:
    profile = context.node_config.get("profile")
    if not profile:
        raise ValueError("the SuperNode has no profile: start it with --node-config "
                         "'profile=\"DIR\"' (edgetune fleet join --profile DIR)")
    return ProfileDevice(str(profile))


app = make_client_app(_profile_device)
