"""Benchmark: onnxruntime against torch eager on the CPU, for the exported champion's graph.

The model is the packaged ImageNet ``tf_efficientnet_lite0`` with a fresh 10-class head at
the serving size (``training.input_size``, 64 px), exported by
:func:`visionloop.registry.export.export_graph` (fixed H/W, dynamic batch, the temperature
baked in) into a fresh work folder. Measured, torch (baseline) and onnxruntime (subject)
alternating for ``--rounds`` rounds, both with the same number of threads:

- **batch 1** and **batch 64**, all cores: the model alone on an in-memory tensor (latency
  per call; torch runs the module that was exported: logits and calibrated probabilities);
- **batch 1** and **batch 128**, one thread: the latter as a Spark scoring task runs it
  (``ScoringJob``: batch 128, one torch thread per Python worker);
- **pyfunc**, all cores: the two MLflow pyfuncs end to end on raw PNG files from
  ``data/sample`` (the one preprocessing, then the model), images per second.

Ratios are onnxruntime / torch rates (above 1: onnxruntime is faster). The parity of the two
on the measured batch is recorded too. Result: ``benchmarks/results/onnx_latency.json``.

    .venv/bin/python -m benchmarks.onnx_latency [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from benchmarks.common import alternate, fresh_workdir, spread, write_result
from visionloop.ingest.samples import CLASS_NAMES
from visionloop.parameters import SAMPLE_DIR
from visionloop.preprocessing import image_options
from visionloop.registry.export import calibrated, export_graph, save_onnx_model, session
from visionloop.registry.served_model import save_model
from visionloop.settings import load_settings
from visionloop.training.models import PACKAGED_MODEL, create_model, model_spec

TEMPERATURE = 1.3
#: (name, batch, threads, calls per measurement): enough calls for a stable median on a
#: noisy 2-core machine; threads None means all cores.
CASES = (
    ("batch_1", 1, None, 60),
    ("batch_64", 64, None, 8),
    ("batch_1_one_thread", 1, 1, 60),
    ("batch_128_one_thread", 128, 1, 4),
)
PYFUNC_IMAGES = 512


def calls_per_second(run: Callable[[], object], calls: int) -> float:
    """Median rate of ``calls`` timed calls of ``run`` (one untimed warm-up call first)."""
    run()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return 1.0 / statistics.median(seconds)


def images_per_second(model: mlflow.pyfunc.PyFuncModel, images: list[bytes]) -> float:
    frame = pd.DataFrame({"image": images})
    model.predict(frame.head(8))
    started = time.perf_counter()
    model.predict(frame)
    return len(images) / (time.perf_counter() - started)


def latency_ms(result: dict) -> dict[str, dict[str, float]]:
    """Per-call milliseconds of both sides, from their rates."""
    return {
        side: spread([1000.0 / rate for rate in result[side]]) for side in ("baseline", "subject")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    work = fresh_workdir("onnx")
    settings = load_settings(data_home=work / "home")
    size = settings.training.input_size
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    model = create_model(PACKAGED_MODEL, len(CLASS_NAMES), "packaged").eval()
    spec = model_spec(model, PACKAGED_MODEL, CLASS_NAMES, size)
    model_pt = work / "model.pt"
    torch.save(spec.checkpoint(model.state_dict(), image_options(settings).to_dict()), model_pt)

    started = time.perf_counter()
    graph = export_graph(model, size, TEMPERATURE, work / "model.onnx")
    export_s = time.perf_counter() - started
    eager = calibrated(model, TEMPERATURE)
    runtimes = {threads: session(graph, threads=threads) for threads in (cores, 1)}

    results: dict[str, dict] = {}
    parity: dict[str, float] = {}
    for name, batch, threads, calls in CASES:
        threads = threads or cores
        tensor = torch.randn(batch, 3, size, size)
        feed = {"pixels": tensor.numpy()}

        def torch_call(tensor: torch.Tensor = tensor, threads: int = threads) -> object:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return eager(tensor)

        def onnx_call(feed: dict = feed, runtime=runtimes[threads]) -> object:
            return runtime.run(None, feed)

        expected = torch_call()[1].numpy()
        parity[f"{name}_max_abs_diff"] = float(np.abs(onnx_call()[1] - expected).max())
        result = alternate(
            lambda run=torch_call, n=calls: calls_per_second(run, n),
            lambda run=onnx_call, n=calls: calls_per_second(run, n),
            args.rounds,
        )
        result["latency_ms"] = latency_ms(result)
        result["images_per_second"] = {
            side: spread([rate * batch for rate in result[side]])
            for side in ("baseline", "subject")
        }
        result["threads"] = threads
        results[name] = result
        print(f"{name}: {result['latency_ms']} ratio {result['ratio']}", flush=True)
    torch.set_num_threads(cores)

    torch_pyfunc = mlflow.pyfunc.load_model(str(save_model(work / "torch", model_pt, TEMPERATURE)))
    onnx_pyfunc = mlflow.pyfunc.load_model(
        str(save_onnx_model(work / "onnx", model_pt, TEMPERATURE))
    )
    files = sorted((SAMPLE_DIR / "labelled").rglob("*.png"))[:PYFUNC_IMAGES]
    images = [path.read_bytes() for path in files]
    pyfunc = alternate(
        lambda: images_per_second(torch_pyfunc, images),
        lambda: images_per_second(onnx_pyfunc, images),
        args.rounds,
    )
    print(f"pyfunc end to end: {pyfunc}")
    write_result(
        "onnx_latency",
        {
            "model": PACKAGED_MODEL,
            "input_size": size,
            "temperature": TEMPERATURE,
            "rounds": args.rounds,
            "threads": cores,
            "export_seconds": round(export_s, 1),
            "onnx_bytes": Path(graph).stat().st_size,
            "parity": parity,
            "model_only": results,
            "pyfunc_images_per_second": {**pyfunc, "images": len(images)},
            "baseline": "torch eager (inference_mode, float32)",
            "subject": "onnxruntime CPUExecutionProvider",
            "note": "machine shared with other benchmarks while measured",
        },
    )


if __name__ == "__main__":
    main()
