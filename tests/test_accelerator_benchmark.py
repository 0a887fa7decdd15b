"""`benchmarks/accelerator.py --tiny` runs end to end on CPU and reports every figure sanely."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEP_FIGURES = ("compile_s", "step_s", "images_per_s", "flops_per_step", "model_flops_per_step",
                "bytes_accessed_per_step", "tflops_achieved", "peak_tflops",
                "peak_memory_bytes", "peak_memory_bytes_at_2x_batch",
                "memory_bytes_per_example", "max_batch_per_device")


def positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0


def test_tiny_run_reports_every_figure(tmp_path):
    out = tmp_path / "tiny.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--tiny", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MFU" in proc.stdout and "fixed_point" in proc.stdout  # the printed table
    report = json.loads(out.read_text())

    device = report["device"]
    assert device["kind"] and device["platform"] == "cpu" and report["jax_version"]
    assert positive(device["memory_bytes"]) and device["cpu_model"]
    assert positive(device["measured_matmul_tflops"]["float32"])
    assert all(positive(device["peak_tflops"][d]) for d in ("float32", "bfloat16"))

    assert report["train"], "no train-step figures"
    for row in report["train"]:
        assert row["config"].startswith("experiments/") and positive(row["num_params"])
        for dtype in ("float32", "bfloat16"):
            step = row[dtype]
            for key in STEP_FIGURES:
                assert positive(step[key]), (row["name"], dtype, key, step.get(key))
            assert 0 < step["mfu"] <= 1, (row["name"], dtype, step["mfu"])
            assert math.isfinite(step["loss_bpd"])
            assert step["peak_memory_bytes"] < device["memory_bytes"]
            assert step["max_batch_per_device"] >= step["batch"]
            assert math.isclose(step["tflops_achieved"],
                                step["model_flops_per_step"] / step["step_s"] / 1e12)
            assert step["model_flops_per_step"] == row["model_flops_per_step"]
        impls = row["conv_impl"]
        assert set(impls["impls"]) == {"auto", "plain", "im2col", "split"}  # masked PixelCNN
        assert impls["fastest"] in impls["impls"]
        for impl, figures in impls["impls"].items():
            assert positive(figures["images_per_s"]) and positive(figures["compile_s"]), impl
            assert 0 < figures["mfu"] <= 1, impl

    sampling = report["sampling"]
    dims = sampling["dimensions"]
    fp = sampling["fixed_point"]
    assert 1 <= fp["passes"] <= dims
    assert fp["identical_to_cached"] is True and fp["differing_dims"] == 0
    assert fp["unsolved_dims"] == 0 and sampling["cached"]["unsolved_dims"] == 0
    assert fp["identical_to_naive_on_timed_steps"] is True
    assert sampling["naive"]["identical_to_cached_on_timed_steps"] is True
    assert 0 < sampling["naive"]["timed_steps"] <= dims
    for method in ("cached", "fixed_point", "naive"):
        assert positive(sampling[method]["seconds"]) and positive(sampling[method]["compile_s"])
        assert positive(sampling[method]["samples_per_s"])
    assert positive(report["wall_s"])
