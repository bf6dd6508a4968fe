"""The GPU check: what only a machine with CUDA can tell us, in under 5 minutes on one GPU.

    python -m bench.gpu            # writes bench/out/gpu.md and prints it
    python -m bench.gpu --cpu-iterations 10 --gpu-iterations 500   # shorter

1. **The defense contract on CUDA**: ``tests/test_defenses.py`` (every registered defense: result
   shapes, the caller's model untouched, no hooks left, progress complete, same seed same
   scores) with ``PRUNESCOPE_TEST_DEVICE=cuda``.
2. **A run through the worker with device cuda**, as the dashboard starts it (``start_run``, a
   separate process): ANP on a full-width PreAct-ResNet-18 with CIFAR-shaped input (3 x 32 x 32,
   random weights, synthetic images in the real ``.npz`` layout: the device machine has no dataset).
3. **ANP at the paper's 2000 iterations on the GPU**, timed, against ANP on the CPU of the same
   machine, per iteration (the CPU runs ``--cpu-iterations`` only; its 2000-iteration time is that
   per-iteration time times 2000, and the report says so).
4. **The scan on CUDA**: every signal on the showcase sample ``cnn_badnets_centre``, on the GPU and
   on the CPU (the verdicts should agree; the ratio is the speed-up).

Nothing here asserts; it reports, and a failing step is reported with its sentence.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "gpu.md"


def synthetic_cifar(path: Path, n_train: int = 2000, n_test: int = 500) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train).astype(np.int64),
             x_test=rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test).astype(np.int64))
    return path


def resnet_checkpoint(path: Path) -> Path:
    from defenses.readers.checkpoints import save_safetensors
    from defenses.readers.models import build_model

    torch.manual_seed(0)
    save_safetensors(build_model("preact_resnet18", 10, 3, 32), str(path))
    return path


def contract_on(device: str) -> str:
    env = {**os.environ, "PRUNESCOPE_TEST_DEVICE": device}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_defenses.py"], env=env,
                       capture_output=True, text=True, cwd=HERE.parent, timeout=240)
    tail = (p.stdout.strip().splitlines() or ["(no output)"])[-1]
    failed = [line for line in p.stdout.splitlines() if line.startswith("FAILED")]
    return f"`pytest tests/test_defenses.py` on {device}: {tail} ({time.time() - t0:.0f} s)" + "".join(
        f"\n  - {f}" for f in failed[:8])


def worker_run(work: Path, npz: Path, ckpt: Path, device: str) -> str:
    from defenses.runs.folder import RunRequest, cancel_run, read_json, read_status, start_run

    req = RunRequest(defense="anp", params={"iterations": 200}, device=device, recover_triggers=False,
                     model={"architecture": "preact_resnet18", "checkpoint": str(ckpt), "arch_kwargs": {}},
                     data={"dataset": f"npz:{npz}", "clean_count": 500, "seed": 0})
    t0 = time.time()
    d = start_run(req, work / "runs")
    while read_status(d).get("state") not in ("done", "failed", "cancelled") and time.time() - t0 < 240:
        time.sleep(1)
    st = read_status(d)
    if cancel_run(d):  # still going after 4 minutes: stop it, or it competes with the timings below
        st = {**st, "state": f"{st.get('state')} (cancelled after 240 s)"}
    res = read_json(d / "result.json") or {}
    line = f"worker run (ANP, 200 iterations, PreAct-ResNet-18, device {device}): {st.get('state')} in {time.time() - t0:.0f} s"
    if st.get("error"):
        line += f"; error: {st['error']}"
    if res:
        line += f"; result keys: {', '.join(sorted(res)[:8])}"
    return line


def anp_seconds(model, clean, iterations: int, device: str) -> float:
    from defenses.methods.anp import ANP, ANPConfig

    cfg = ANPConfig(iterations=iterations, snapshot_every=max(iterations, 1))
    model = model.to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ANP(cfg).run(model, clean, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def anp_timing(npz: Path, ckpt: Path, gpu_iters: int, cpu_iters: int, device: str) -> list[str]:
    from defenses.readers.checkpoints import load_into
    from defenses.readers.data import load_dataset
    from defenses.readers.models import build_model

    data = load_dataset(f"npz:{npz}")
    model = load_into(build_model("preact_resnet18", 10, 3, 32), str(ckpt)).eval()
    anp_seconds(model, data.clean, 5, device)  # warm-up: CUDA context and kernels
    gpu = anp_seconds(model, data.clean, gpu_iters, device)
    cpu = anp_seconds(model, data.clean, cpu_iters, "cpu")
    per_gpu, per_cpu = gpu / gpu_iters, cpu / cpu_iters
    return [f"ANP, full-width PreAct-ResNet-18, batch 128: GPU {gpu_iters} iterations {gpu:.1f} s "
            f"({per_gpu * 1000:.1f} ms/iteration); CPU ({torch.get_num_threads()} threads) {cpu_iters} iterations "
            f"{cpu:.1f} s ({per_cpu * 1000:.0f} ms/iteration, so about {per_cpu * 2000 / 60:.0f} min for 2000, "
            f"extrapolated); **GPU / CPU speed-up {per_cpu / per_gpu:.1f}x** per iteration"]


def scan_both(device: str) -> list[str]:
    from defenses.readers.data import load_dataset
    from defenses.runs.inputs import load_model
    from defenses.scan import all_signals
    from defenses.scan.scanner import ScanConfig, scan

    data = load_dataset("mnist5k")
    out = []
    secs = {}
    for dev in (device, "cpu"):
        model, _, _ = load_model({"sample": "cnn_badnets_centre"}, data.shape, data.num_classes)
        model.to(dev)
        t0 = time.perf_counter()
        v = scan(model, data.clean, ScanConfig(signals=tuple(all_signals())), device=dev)
        secs[dev] = time.perf_counter() - t0
        out.append(f"scan of cnn_badnets_centre on {dev}: p = {v.probability:.3f}, label {v.label}, "
                   f"{secs[device]:.1f} s (" + ", ".join(f"{n} {r.seconds:.1f} s" for n, r in v.signals.items()) + ")")
    out.append(f"scan GPU / CPU speed-up: {secs['cpu'] / secs[device]:.1f}x")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-iterations", type=int, default=2000)
    p.add_argument("--cpu-iterations", type=int, default=20)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--device", default="cuda", help="cpu only to try this script itself on a machine without a GPU")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA device here: bench.gpu needs one (CI never has one; run it on a GPU machine).")
        return 2
    lines = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU, ' + args.device}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
             f"{os.cpu_count()} CPU cores", ""]
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    npz, ckpt = synthetic_cifar(work / "cifar.npz"), resnet_checkpoint(work / "resnet.safetensors")
    dev = args.device
    steps = [("contract", lambda: contract_on(dev)), ("worker", lambda: worker_run(work, npz, ckpt, dev)),
             ("anp", lambda: anp_timing(npz, ckpt, args.gpu_iterations, args.cpu_iterations, dev)),
             ("scan", lambda: scan_both(dev))]
    for name, step in steps:
        t0 = time.time()
        try:
            got = step()
            lines += [f"- {g}" for g in ([got] if isinstance(got, str) else got)]
        except Exception as e:  # a report, not a test: say what failed and go on
            lines.append(f"- {name}: FAILED after {time.time() - t0:.0f} s: {type(e).__name__}: {e}")
            traceback.print_exc()
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
