#!/usr/bin/env bash
# The GPU health check on a real GPU machine (run through the device tool; no Ray needed):
# every raw NVML reading with its latency, the verdict on an idle GPU and on a GPU at 98 %
# memory and 100 % load (must be ok), the Xid watcher, and the sampling cost.
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,uuid,pci.bus_id,driver_version,memory.total,temperature.gpu --format=csv
  python3 -c "import pynvml, psutil, numpy; print('nvidia-ml-py', getattr(pynvml, '__version__', '?'), 'psutil', psutil.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 -m ray_ft.cli probe --json --raw --expect-gpus 1 > "$OUT/probe_raw.json" 2> "$OUT/probe_raw.err"
echo "probe --json --raw exit $?"
python3 -m ray_ft.cli probe --expect-gpus 1 | tee "$OUT/probe.txt"
python3 bench/device/gpu_busy.py 2>&1 | tee "$OUT/busy.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 | tee "$OUT/pytest.txt"
