"""LiteRT (ai-edge-litert) peer worker: on-device training with a tf.Module's signatures.

Runs in bench/peers/.venvs/litert (tensorflow + ai-edge-litert + numpy):

    .venvs/litert/bin/python litert_worker.py JOB.json

Tasks (job["task"]):
- build: the training models and the base, with tensorflow (a workstation's job).
  Each head is a tf.Module with resource variables and @tf.function signatures
  `train` (x, y, weight, lr -> loss), `infer` (x -> probabilities) and `params`
  (-> w, b), as in TensorFlow's "On-Device Training with TensorFlow Lite" guide, and
  converted with `TFLiteConverter.from_saved_model`, `experimental_enable_resource_variables`.
  The guide's own formulation (sparse softmax cross-entropy, dynamic batch) needs Select
  TF ops (Flex), which neither tensorflow 2.21's `tf.lite.Interpreter` nor
  ai-edge-litert 2.3 can run; `flex_probe` records that. So the models here are built
  from TFLite builtins only: a static batch shape (so the gradient needs no
  BroadcastGradientArgs) and one-hot x log_softmax for the loss; a `weight` input masks
  the padding rows of a short last batch. The base is edgetune's EfficientNet-Lite0
  ONNX graph (the same weights) mapped op by op onto TensorFlow, NHWC, then converted to
  .tflite in fp32 and int8 (post-training quantization on the same calibration photos).
- head, personalize, base: measurements with `ai_edge_litert.interpreter.Interpreter`
  (the device runtime, no tensorflow import); `head` also times tensorflow's deprecated
  `tf.lite.Interpreter` on the same files.
- first_answer: LiteRT's equivalent of edgetune's first answer on a new profile: load
  the .tflite base (batch 1) and the head (its interpreter allocated, ready to train),
  the features of one sample per class, then the query's features and a nearest-class-
  mean prediction (cosine, softmax(cos / 0.1): edgetune's prototypes) in numpy.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # personalization time counts from here, imports included

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import _job  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- build


def _variables(tf, module, W0, b0, adam: bool) -> None:
    """The head's resource variables, and Adam's slots and step counter."""
    module.w = tf.Variable(W0, name="w")
    module.b = tf.Variable(b0, name="b")
    if adam:
        module.slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
                        for v in (module.w, module.b)]
        module.t = tf.Variable(0.0, name="t")


def _step(tf, module, grads, lr, adam: bool, betas, eps) -> None:
    """SGD, or Adam as torch.optim.Adam, on the module's w and b (traced into `train`)."""
    if not adam:
        for v, g in zip((module.w, module.b), grads):
            v.assign_sub(lr * g)
        return
    t = module.t + 1.0
    module.t.assign(t)
    c1 = 1.0 - tf.pow(betas[0], t)
    c2 = 1.0 - tf.pow(betas[1], t)
    for v, g, (m, s) in zip((module.w, module.b), grads, module.slots):
        m_new = betas[0] * m + (1.0 - betas[0]) * g
        s_new = betas[1] * s + (1.0 - betas[1]) * g * g
        m.assign(m_new)
        s.assign(s_new)
        v.assign_sub(lr / c1 * m_new / (tf.sqrt(s_new) / tf.sqrt(c2) + eps))


def head_module(tf, W0, b0, optimizer: str, batch: int, betas=(0.9, 0.999), eps=1e-8):
    """A softmax head trained by its `train` signature; W is [classes, features]."""
    classes, features = W0.shape
    adam = optimizer == "adam"

    class Head(tf.Module):
        def __init__(self):
            super().__init__()
            _variables(tf, self, W0, b0, adam)

        @tf.function(input_signature=[tf.TensorSpec([batch, features], tf.float32),
                                      tf.TensorSpec([batch], tf.int64),
                                      tf.TensorSpec([batch], tf.float32),
                                      tf.TensorSpec([], tf.float32)])
        def train(self, x, y, weight, lr):
            with tf.GradientTape() as tape:
                logits = tf.matmul(x, self.w, transpose_b=True) + self.b
                nll = -tf.reduce_sum(tf.one_hot(y, classes) * tf.nn.log_softmax(logits), axis=1)
                loss = tf.reduce_sum(weight * nll) / tf.reduce_sum(weight)
            _step(tf, self, tape.gradient(loss, [self.w, self.b]), lr, adam, betas, eps)
            return {"loss": loss}

        @tf.function(input_signature=[tf.TensorSpec([None, features], tf.float32)])
        def infer(self, x):
            return {"probabilities": tf.nn.softmax(tf.matmul(x, self.w, transpose_b=True)
                                                   + self.b)}

        @tf.function(input_signature=[])
        def params(self):
            return {"w": self.w.read_value(), "b": self.b.read_value()}

    return Head()


def guide_module(tf, W0, b0, optimizer: str = "sgd", betas=(0.9, 0.999), eps=1e-8):
    """The guide's formulation: dynamic batch, sparse softmax cross-entropy (a Flex op)."""
    classes, features = W0.shape
    adam = optimizer == "adam"

    class Guide(tf.Module):
        def __init__(self):
            super().__init__()
            _variables(tf, self, W0, b0, adam)

        @tf.function(input_signature=[tf.TensorSpec([None, features], tf.float32),
                                      tf.TensorSpec([None], tf.int64),
                                      tf.TensorSpec([], tf.float32)])
        def train(self, x, y, lr):
            with tf.GradientTape() as tape:
                logits = tf.matmul(x, self.w, transpose_b=True) + self.b
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y, logits=logits))
            _step(tf, self, tape.gradient(loss, [self.w, self.b]), lr, adam, betas, eps)
            return {"loss": loss}

        @tf.function(input_signature=[])
        def params(self):
            return {"w": self.w.read_value(), "b": self.b.read_value()}

    return Guide()


def convert_module(tf, module, path: Path, select_ops: bool = False) -> bytes:
    saved = path.with_suffix(".saved_model")
    signatures = {name: getattr(module, name).get_concrete_function()
                  for name in ("train", "infer", "params") if hasattr(module, name)}
    tf.saved_model.save(module, str(saved), signatures=signatures)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if select_ops else [])
    converter.experimental_enable_resource_variables = True
    data = converter.convert()
    path.write_bytes(data)
    return data


def flex_probe(tf, np, W0, b0, out: Path) -> dict:
    """Does the guide's formulation convert with builtins alone, and does either
    interpreter run it once converted with Select TF ops?"""
    report = {}
    try:
        convert_module(tf, guide_module(tf, W0, b0), out / "guide_builtins.tflite")
        report["builtins_only"] = "converts"
    except Exception as e:  # the converter lists the ops it lacks
        text = str(e)
        ops = sorted({line.split("TF Select ops:")[1].strip() for line in text.splitlines()
                      if "TF Select ops:" in line})
        report["builtins_only"] = f"fails: needs Select TF ops {', '.join(ops)}"
    path = out / "guide_flex.tflite"
    convert_module(tf, guide_module(tf, W0, b0), path, select_ops=True)
    x = np.zeros((4, W0.shape[1]), np.float32)
    y = np.zeros(4, np.int64)
    from ai_edge_litert.interpreter import Interpreter as LiteInterpreter
    for name, cls in (("ai_edge_litert", LiteInterpreter), ("tf.lite", tf.lite.Interpreter)):
        try:
            runner = cls(model_path=str(path)).get_signature_runner("train")
            runner(x=x, y=y, lr=np.array(0.01, np.float32))
            report[name] = "runs"
        except Exception as e:
            report[name] = f"{type(e).__name__}: {str(e).split('.')[0]}"
    return report


def base_function(tf, np, graph: dict, folder: Path):
    """edgetune's base ONNX graph (Cast, Sub, Div, Transpose, Conv, Clip, Add,
    GlobalAveragePool, Flatten, Identity) as a TensorFlow function, NHWC throughout."""
    inits = {name: np.load(folder / file) for name, file in graph["inits"].items()}
    kernels = {}
    for node in graph["nodes"]:
        if node["op"] == "Conv":
            w = inits[node["inputs"][1]]
            group = node["attrs"].get("group", 1)
            if group == 1:
                kernels[node["inputs"][1]] = tf.constant(w.transpose(2, 3, 1, 0))  # HWIO
            elif group == w.shape[0] and w.shape[1] == 1:
                kernels[node["inputs"][1]] = tf.constant(w.transpose(2, 3, 0, 1))  # depthwise
            else:
                raise ValueError(f"grouped conv with group {group} is not mapped")

    def same_pads(size, k, s):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def run(image):
        env = {graph["input"]: image}
        for node in graph["nodes"]:
            op, ins, attrs = node["op"], node["inputs"], node["attrs"]

            def val(name):
                return env[name] if name in env else tf.constant(inits[name])

            if op == "Cast":
                out = tf.cast(val(ins[0]), tf.float32)
            elif op in ("Sub", "Div", "Add"):
                fn = {"Sub": tf.subtract, "Div": tf.divide, "Add": tf.add}[op]
                out = fn(val(ins[0]), val(ins[1]))
            elif op == "Transpose":
                if attrs["perm"] != [0, 3, 1, 2]:
                    raise ValueError(f"transpose {attrs['perm']} is not mapped")
                out = val(ins[0])  # NHWC -> NCHW in ONNX; TensorFlow stays NHWC
            elif op == "Conv":
                x = val(ins[0])
                kh, kw = attrs["kernel_shape"]
                sh, sw = attrs.get("strides", [1, 1])
                t, l, b, r = attrs.get("pads", [0, 0, 0, 0])
                h, w = int(x.shape[1]), int(x.shape[2])
                if (t, b) == same_pads(h, kh, sh) and (l, r) == same_pads(w, kw, sw):
                    padding = "SAME"
                else:
                    x = tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]])
                    padding = "VALID"
                kernel = kernels[ins[1]]
                if attrs.get("group", 1) == 1:
                    out = tf.nn.conv2d(x, kernel, [1, sh, sw, 1], padding)
                else:
                    out = tf.nn.depthwise_conv2d(x, kernel, [1, sh, sw, 1], padding)
                if len(ins) > 2:
                    out = tf.nn.bias_add(out, inits[ins[2]])
            elif op == "Clip":
                lo, hi = float(inits[ins[1]]), float(inits[ins[2]])
                x = val(ins[0])
                out = tf.nn.relu6(x) if (lo, hi) == (0.0, 6.0) else tf.clip_by_value(x, lo, hi)
            elif op == "GlobalAveragePool":
                out = tf.reduce_mean(val(ins[0]), axis=[1, 2], keepdims=True)
            elif op == "Flatten":
                x = val(ins[0])
                out = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
            elif op == "Identity":
                out = val(ins[0])
            else:
                raise ValueError(f"ONNX op {op} is not mapped")
            env[node["outputs"][0]] = out
        return env[graph["output"]]

    return run


def build_base(tf, np, job: dict, out: Path) -> dict:
    folder = Path(job["base_graph"]).parent
    graph = json.loads(Path(job["base_graph"]).read_text())
    run = base_function(tf, np, graph, folder)
    spec = tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="image")

    class Base(tf.Module):
        @tf.function(input_signature=[spec])
        def __call__(self, image):
            return {"features": run(image)}

    module = Base()
    concrete = module.__call__.get_concrete_function()
    calib = np.load(job["calibration"])
    report = {}
    for name, quantize in (("base.tflite", False), ("base.int8.tflite", True)):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]

            def representative(calib=calib):
                for img in calib:
                    yield [img[None]]

            converter.representative_dataset = representative
        data = converter.convert()
        (out / name).write_bytes(data)
        report[name] = len(data)
    return report


def build(job: dict) -> dict:
    import numpy as np
    import tensorflow as tf

    out = Path(job["out"])
    report = {"versions": {"tensorflow": tf.__version__}}
    for cfg in job["heads"]:
        t = time.perf_counter()
        module = head_module(tf, np.load(cfg["W0"]), np.load(cfg["b0"]), cfg["optimizer"],
                             job["batch"])
        convert_module(tf, module, out / f"{cfg['name']}.tflite")
        if cfg["name"] != "personalize":  # the guide's form, for tensorflow <= 2.18
            convert_module(tf, guide_module(tf, np.load(cfg["W0"]), np.load(cfg["b0"]),
                                            cfg["optimizer"]),
                           out / f"{cfg['name']}.guide.tflite", select_ops=True)
        report[cfg["name"]] = time.perf_counter() - t
    cfg = job["heads"][0]
    report["flex_probe"] = flex_probe(tf, np, np.load(cfg["W0"]), np.load(cfg["b0"]), out)
    report["base"] = build_base(tf, np, job, out)
    return report


# --------------------------------------------------------------------------- device side


def interpreter_class(kind: str):
    if kind == "tf.lite":
        import tensorflow as tf

        return tf.lite.Interpreter
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


class Trainer:
    """A head .tflite driven through its signature runners (one `train` call per step)."""

    def __init__(self, np, path: str, cls, lr: float, batch: int, threads: int):
        self.np = np
        self.it = cls(model_path=path, num_threads=threads)
        self.runner = self.it.get_signature_runner("train")
        self.lr = np.array(lr, np.float32)
        self.batch = batch
        self.ones = np.ones(batch, np.float32)

    def train(self, X, y, steps):
        B, run, ones, lr = self.batch, self.runner, self.ones, self.lr
        for i in _job.cycle(len(y), B, steps):
            run(x=X[i:i + B], y=y[i:i + B], weight=ones, lr=lr)

    def step_rows(self, X, y):
        """One step on up to `batch` rows: a short batch is padded with weight-0 rows."""
        np, n, B = self.np, len(y), self.batch
        if n == B:
            return self.runner(x=X, y=y, weight=self.ones, lr=self.lr)["loss"]
        x = np.zeros((B, X.shape[1]), np.float32)
        x[:n] = X
        labels = np.zeros(B, np.int64)
        labels[:n] = y
        weight = np.zeros(B, np.float32)
        weight[:n] = 1.0
        return self.runner(x=x, y=labels, weight=weight, lr=self.lr)["loss"]

    def params(self):
        out = self.it.get_signature_runner("params")()
        return {"W": out["w"], "b": out["b"]}

    def predict(self, X):
        return self.it.get_signature_runner("infer")(x=X)["probabilities"]


class GuideTrainer(Trainer):
    """The guide's form: `train(x, y, lr)`, any batch size, a Flex op inside."""

    def train(self, X, y, steps):
        B, run, lr = self.batch, self.runner, self.lr
        for i in _job.cycle(len(y), B, steps):
            run(x=X[i:i + B], y=y[i:i + B], lr=lr)


def head(job: dict) -> dict:
    """job["form"]: "builtins" (the measured models; job["interpreters"] says which
    interpreters run them) or "guide" (the guide's Flex form, tensorflow's interpreter)."""
    import numpy as np

    def variants(cfg):
        out = {}
        if job.get("form") == "guide":
            cls = interpreter_class("tf.lite")
            out["tf.lite + Flex, the guide's form"] = (
                lambda: GuideTrainer(np, cfg["guide"], cls, cfg["lr"], job["batch"],
                                     job["threads"]))
            return out
        for kind in job.get("interpreters", ("ai_edge_litert", "tf.lite")):
            cls = interpreter_class(kind)
            out[kind] = (lambda cls=cls: Trainer(np, cfg["tflite"], cls, cfg["lr"],
                                                 job["batch"], job["threads"]))
        return out

    return _job.train_task(job, variants, np)


class Base:
    """The converted base at one batch size."""

    def __init__(self, path: str, batch: int, cls, threads: int):
        self.it = cls(model_path=path, num_threads=threads)
        inp = self.it.get_input_details()[0]
        self.it.resize_tensor_input(inp["index"], [batch, 224, 224, 3])
        self.it.allocate_tensors()
        self.inp = inp["index"]
        self.out = self.it.get_output_details()[0]["index"]

    def __call__(self, images):
        self.it.set_tensor(self.inp, images)
        self.it.invoke()
        return self.it.get_tensor(self.out).copy()


def base(job: dict) -> dict:
    import numpy as np

    cls = interpreter_class("ai_edge_litert")
    images = np.load(job["images"])
    results = {}
    for precision, path in job["models"].items():
        for batch in job["batches"]:
            model = Base(path, batch, cls, job["threads"])
            chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
            feats = np.concatenate([model(c) for c in chunks])
            np.save(Path(job["out"]) / f"litert.{precision}.b{batch}.npy", feats)
            results[f"{precision}|{batch}"] = _job.timed(
                lambda model=model, chunks=chunks: [model(c) for c in chunks], len(images),
                job["repeats"])
    return {"base": results}


def personalize(job: dict) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    phases = {"import": time.perf_counter() - T0}
    mem = {"import": _job.peak_mib()}  # the high-water mark at each phase's end
    t = time.perf_counter()
    images, labels = np.load(job["images"]), np.load(job["labels"])
    base_batch = job["base_batch"]
    model = Base(job["base_tflite"], base_batch, Interpreter, job["threads"])
    trainer = Trainer(np, job["tflite"], Interpreter, job["lr"], job["batch"], job["threads"])
    phases["model load"] = time.perf_counter() - t
    mem["model load"] = _job.peak_mib()
    t = time.perf_counter()
    parts = []
    for i in range(0, len(images), base_batch):
        chunk = images[i:i + base_batch]
        if len(chunk) < base_batch:  # the base was resized to a fixed batch: pad
            chunk = np.concatenate([chunk, np.zeros((base_batch - len(chunk), *chunk.shape[1:]),
                                                    np.uint8)])
        parts.append(model(chunk)[:len(images) - i])
    feats = np.concatenate(parts)
    phases["features"] = time.perf_counter() - t
    mem["features"] = _job.peak_mib()
    t = time.perf_counter()
    losses = _job.personalize_loop(len(labels), job["epochs"], job["batch"],
                                   lambda rows: trainer.step_rows(feats[rows], labels[rows]), np)
    phases["training"] = time.perf_counter() - t
    mem["training"] = _job.peak_mib()
    total = time.perf_counter() - T0
    cpu = _job.cpu_seconds()
    peak = _job.peak_mib()
    np.save(Path(job["out"]) / "litert.personalize.features.npy", feats)
    accuracy = float((trainer.predict(feats).argmax(1) == labels).mean())
    return {"total": total, "cpu": cpu, "phases": phases, "peak_mib": peak, "mem": mem,
            "final_loss": losses[-1][-1],
            "train_accuracy": accuracy}


def first_answer(job: dict) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    phases = {"import": time.perf_counter() - T0}
    mem = {"import": _job.peak_mib()}  # the high-water mark at each phase's end
    images = np.load(job["images"], mmap_mode="r")
    samples = [np.array(images[i:i + 1]) for i in job["samples"]]
    query = np.array(images[job["query"]:job["query"] + 1])
    t = time.perf_counter()
    model = Base(job["base_tflite"], 1, Interpreter, job["threads"])
    head_model = Interpreter(model_path=job["tflite"], num_threads=job["threads"])
    head_model.get_signature_runner("train")  # allocated: ready to train, as a profile is
    phases["open"] = time.perf_counter() - t
    mem["open"] = _job.peak_mib()
    t = time.perf_counter()
    feats = np.concatenate([model(x) for x in samples]).astype(np.float32)
    means = feats / np.linalg.norm(feats, axis=1, keepdims=True)  # one sample per class
    phases["samples"] = time.perf_counter() - t
    mem["samples"] = _job.peak_mib()
    t = time.perf_counter()
    q = model(query)[0].astype(np.float32)
    logits = means @ (q / np.linalg.norm(q)) / 0.1
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    answer = f"c{int(np.argmax(scores))}"
    phases["answer"] = time.perf_counter() - t
    mem["answer"] = _job.peak_mib()
    total = time.perf_counter() - T0
    return {"total": total, "cpu": _job.cpu_seconds(), "phases": phases,
            "peak_mib": _job.peak_mib(), "mem": mem, "answer": answer}


TASKS = {"build": build, "train": head, "base": base, "personalize": personalize,
         "first_answer": first_answer}

if __name__ == "__main__":
    job = _job.load_job()
    _job.emit(TASKS[job["task"]](job))
    sys.stdout.flush()
