"""The benchmark scripts run and record every figure: the GPU check (on the CPU here) and the scale-out benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # builds CONCH (ViT-B/16) with random weights and embeds two 448 px patches on the CPU
def test_gpu_check_runs_on_cpu_and_records_its_figures():
    result_path = BENCHMARKS / "results" / "gpu_cpu_quick.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "gpu.py", "--device", "cpu", "--quick", "--models", "conch"]
    subprocess.run(command, cwd=BENCHMARKS, env=env, check=True, timeout=900)
    figures = json.loads(result_path.read_text())["figures"]
    conch = figures["conch"]
    assert conch["dim"] == 512 and conch["patches"] == 2
    assert conch["bare_forward_patches_per_s"] > 0 and conch["embed_patches_per_s"] > 0
    assert conch["ratio_embed_to_bare"] > 0
    assert conch["bare_forward_peak_gpu_mb"] is None and conch["embed_peak_gpu_mb"] is None  # no GPU memory on a CPU
    assert conch["cosine_to_cpu_float32_min"] > 0.999  # the same float32 forward on both sides
    fit = figures["fit"]
    assert (fit["n_dims"], fit["n_types"], fit["epochs"]) == (1536, 39, 2)
    assert fit["s_per_epoch"] > 0 and fit["fit_peak_gpu_mb"] is None
    assert fit["predictions_max_abs_difference_device_vs_cpu"] <= 1e-5 * max(1.0, fit["predictions_max_abs_value"])
    assert figures["peak_rss_mb"] > 0


def test_gpu_check_without_cuda_skips_cleanly():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA run is the real one")
    completed = subprocess.run(
        [sys.executable, "gpu.py"], cwd=BENCHMARKS, capture_output=True, text=True, check=True, timeout=300
    )
    assert "Skipped: no CUDA device" in completed.stdout


@pytest.mark.slow  # seven local dask clusters embedding 4 small slides 3 times each
def test_scale_benchmark_records_both_settings():
    result_path = BENCHMARKS / "results" / "scale_quick.json"
    result_path.unlink(missing_ok=True)
    subprocess.run([sys.executable, "scale.py", "--quick"], cwd=BENCHMARKS, check=True, timeout=900)
    figures = json.loads(result_path.read_text())["figures"]
    bindable = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    settings = ["shared_cores", "one_core_per_worker"] if bindable else ["shared_cores"]
    for setting in settings:
        runs = figures[setting]
        for run, n_processes in (("in_process", 1), ("1_worker", 1), ("2_workers", 2)):
            assert runs[run]["slides_per_minute"] > 0
            assert len(runs[run]["cpu_s_per_slide"]) == n_processes
        # both workers got slides
        assert all(share > 0 for share in runs["2_workers"]["cpu_s_per_slide"])
        one, two = runs["1_worker"]["slides_per_minute"], runs["2_workers"]["slides_per_minute"]
        assert runs["scaling_2_vs_1_workers"] == pytest.approx(two / one, abs=1e-3)
