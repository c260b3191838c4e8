#!/usr/bin/env bash
# GPU check (see docs/PERFORMANCE.md): training clips/s of `erm` and `dann` with r3d_18 at
# 16x112x112, bf16-mixed, batch 32, on generated 320x240 H.264 mp4 videos read by the real
# DataModule, with the GPU utilisation (nvidia-smi, sampled in the background) and whether the
# loader or the GPU was the bottleneck; then the same on batches already in memory (the compute
# ceiling). Finishes in under 8 minutes on one GPU. Needs no network.
#
#   benchmarks/gpu_check.sh          # on the GPU machine, from anywhere in the checkout
#   benchmarks/gpu_check.sh --cpu    # a scaled-down run on CPU (tiny3d), to test the script
#
# Environment: PYTHON (default: the checkout's .venv/bin/python, else python3), WORKERS (loader
# workers, default min(12, CPUs - 2)), EPOCHS (default 3), KEEP=DIR (keep data, logs, JSON there).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option '$arg' (use --cpu or --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || command -v python || true)"; fi
fi
if [ -z "$PY" ]; then echo "gpu_check: MISSING: a python interpreter (set PYTHON=/path/to/python)"; exit 3; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
START=$(date +%s)

echo "== 1. requirements ($MODE mode)"
"$PY" - "$MODE" <<'PYEOF' || exit 3
import importlib, sys
mode, missing = sys.argv[1], []
def need(mod, hint):
    try:
        return importlib.import_module(mod)
    except Exception as err:  # noqa: BLE001 - report every missing piece at once
        missing.append(f"{mod}: {type(err).__name__}: {err} -> {hint}")
print(f"python {sys.version.split()[0]} ({sys.executable})")
torch = need("torch", "pip install torch (a CUDA build for the GPU check)")
for mod, hint in [
    ("torchvision", "pip install torchvision (r3d_18)"), ("lightning", "pip install lightning"),
    ("torchmetrics", "pip install torchmetrics"), ("jsonargparse", "pip install 'jsonargparse[signatures]'"),
    ("yaml", "pip install pyyaml"), ("rich", "pip install rich"), ("filelock", "pip install filelock"),
    ("av", "pip install av (PyAV, with FFmpeg's libx264)"),
    ("vidlit.cli", "run from the vidlit checkout (PYTHONPATH is set to it) or pip install -e ."),
    ("strategies.dann", "the checkout's strategies/ folder"), ("benchmarks._common", "the checkout's benchmarks/ folder"),
]:
    need(mod, hint)
try:
    import av
    av.codec.Codec("libx264", "w")
except Exception as err:  # noqa: BLE001
    missing.append(f"libx264 encoder in PyAV: {err} -> a PyAV wheel with libx264 (pip install av)")
if torch is not None:
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda})")
    if mode == "gpu":
        if not torch.cuda.is_available():
            missing.append(f"a CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}) -> check nvidia-smi, CUDA_VISIBLE_DEVICES, a CUDA build of torch")
        else:
            print(f"GPU: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
for mod in ("lightning", "av", "torchvision"):
    try:
        print(f"{mod} {importlib.import_module(mod).__version__}")
    except Exception:  # noqa: BLE001
        pass
if missing:
    print("gpu_check: MISSING:\n  " + "\n  ".join(missing))
    sys.exit(1)
print("all requirements found")
PYEOF

WORK="${KEEP:-$(mktemp -d /tmp/vidlit-gpu-check-XXXXXX)}"
mkdir -p "$WORK"
SAMPLER=""
cleanup() {
  if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
if [ "$MODE" = gpu ]; then
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    ( while :; do
        echo "$(date +%s.%N) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | tr -d ' ')"
        sleep 0.5
      done ) > "$WORK/gpu_util.log" 2>/dev/null &
    SAMPLER=$!
  else
    echo "gpu_check: nvidia-smi not found: GPU utilisation will not be reported"
  fi
fi

echo "== 2. data and runs (work folder $WORK)"
"$PY" - "$MODE" "$WORK" <<'PYEOF'
import json, os, sys, time
from multiprocessing import Pool

import numpy as np

from benchmarks._common import summarize, vidlit_subprocess

mode, work = sys.argv[1], sys.argv[2]
gpu = mode == "gpu"
cpus = os.cpu_count() or 2
C = dict(  # the GPU check, and its scaled-down CPU version
    backbone="r3d_18" if gpu else "tiny3d", frames=16 if gpu else 4, size=112 if gpu else 32,
    batch=32 if gpu else 6, precision="bf16-mixed" if gpu else "32-true", accelerator="gpu" if gpu else "cpu",
    per_class=40 if gpu else 4, classes=4 if gpu else 2, video_frames=64 if gpu else 24,
    height=240 if gpu else 120, width=320 if gpu else 160, epochs=int(os.environ.get("EPOCHS", 3 if gpu else 2)),
    workers=int(os.environ.get("WORKERS", min(12, max(1, cpus - 2)) if gpu else 1)), skip=3 if gpu else 1,
)
print("config: " + ", ".join(f"{k}={v}" for k, v in C.items()), flush=True)

def make(job):
    path, seed = job
    from vidlit.data import synthetic
    from vidlit.data.video_io import write_video
    rng = np.random.default_rng(seed)
    # circles never leave the frame, however long the video; the label does not matter here
    small = synthetic.render_video("texture", "circle", rng, C["video_frames"], C["width"] // 4)
    big = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)[:, : C["height"], : C["width"]].astype(np.int16)
    big += rng.normal(0, 1.5, big.shape).astype(np.int16)  # sensor noise: a camera-like bitrate
    write_video(path, np.clip(big, 0, 255).astype(np.uint8), fps=25, gop=16)

root = os.path.join(work, "data")
jobs = []
for d, n in (("d0", C["per_class"]), ("d1", C["per_class"]), ("d2", 2)):
    for c in range(C["classes"]):
        for v in range(n):
            jobs.append((os.path.join(root, d, f"c{c}", f"{d}_c{c}_{v:03d}.mp4"), len(jobs)))
t0 = time.time()
if not os.path.isfile(os.path.join(root, ".done")):
    with Pool(min(16, cpus)) as pool:
        pool.map(make, jobs)
    open(os.path.join(root, ".done"), "w").close()
print(f"data: {len(jobs)} videos {C['width']}x{C['height']}, {C['video_frames']} frames, H.264, in {time.time() - t0:.0f} s", flush=True)

common = [
    "--backbone", C["backbone"], "--data.num_frames", str(C["frames"]), "--data.size", str(C["size"]),
    "--data.batch_size", str(C["batch"]), "--trainer.precision", C["precision"], "--trainer.accelerator", C["accelerator"],
    "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
]
mp4 = ["--data.root", root, "--data.target_domains", "[d2]", "--data.holdout_fraction", "0.1",
       "--data.num_workers", str(C["workers"]), "--data.eval_target_each_epoch", "false", "--trainer.max_epochs", str(C["epochs"])]
steps = max(8, (2 * C["per_class"] * C["classes"]) // C["batch"])
memory = ["--dataset", "bench_memory", "--data.num_domains", "2", "--data.num_classes", str(C["classes"]),
          "--data.train_batches", str(steps + C["skip"]), "--trainer.max_epochs", "1"]

def gpu_util(t_start, t_end):
    path = os.path.join(work, "gpu_util.log")
    vals = []
    if os.path.isfile(path):
        for line in open(path):
            parts = line.split()
            if len(parts) == 2 and "," in parts[1]:
                t, (util, _mem) = float(parts[0]), parts[1].split(",")[:2]
                if t_start <= t <= t_end and util.strip().isdigit():
                    vals.append(int(util))
    return (sum(vals) / len(vals), len(vals)) if vals else (None, 0)

results = {}
for strategy in ("erm", "dann"):
    for data, extra in (("mp4", mp4), ("memory", memory)):
        records, wall, _ = vidlit_subprocess(["--strategy", strategy, *common, *extra], skip=C["skip"], memory=data == "memory")
        st = records[0]["steps"]
        s = summarize(st)
        util, n = gpu_util(st[0]["end"] - st[0]["step"], st[-1]["end"]) if st else (None, 0)
        s.update(gpu_util=util, util_samples=n, wall_s=wall)
        results[f"{strategy}/{data}"] = s
        u = f"{util:.0f}% ({n} samples)" if util is not None else "n/a"
        print(f"GPU_CHECK {strategy:4s} {data:6s}: {s['clips_per_s']:8.1f} clips/s, step {s['step_s'] * 1e3:6.1f} ms "
              f"(waiting for data {s['data_s'] / s['step_s'] * 100:4.1f}%), GPU util {u}, {s['steps']} timed steps, run {wall:.0f} s", flush=True)

for strategy in ("erm", "dann"):
    m, c = results[f"{strategy}/mp4"], results[f"{strategy}/memory"]
    share, wait = m["clips_per_s"] / c["clips_per_s"], m["data_s"] / m["step_s"]
    loader_bound = share < 0.9 and wait > 0.1
    verdict = "the LOADER (the model waits for data)" if loader_bound else ("the GPU (compute)" if gpu else "the model (compute)")
    print(f"GPU_CHECK {strategy}: mp4 reaches {share * 100:.0f}% of the in-memory ceiling "
          f"({m['clips_per_s']:.1f} vs {c['clips_per_s']:.1f} clips/s); data wait {wait * 100:.0f}% of a step; "
          f"bottleneck: {verdict}")
with open(os.path.join(work, "gpu_check.json"), "w") as fh:
    json.dump({"mode": mode, "config": C, "results": results}, fh, indent=1)
PYEOF
rc=$?
echo "== done in $(( $(date +%s) - START )) s (exit $rc)"
exit $rc
