"""On a real GPU: the health verdict while the GPU is busy (98 % memory, 100 % load).

Busy is not broken: every check must say ``ok``. Also times the health sample and notes
whether the Xid event watcher could register. Prints one JSON line per phase.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

from ray_ft.health.monitor import HealthMonitor


def phase(monitor: HealthMonitor, name: str, seconds: float) -> dict:
    severities, reasons, times, loads, mem = [], set(), [], [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        health = monitor.sample()
        times.append((time.perf_counter() - start) * 1000)
        report = monitor.check(health)
        severities.append(report.severity.value)
        reasons.update(report.reasons)
        for gpu in health["gpus"]:
            if gpu.get("load") is not None:
                loads.append(gpu["load"])
                mem.append(100 * gpu["memory_used"] / gpu["memory_total"])
        time.sleep(0.5)
    return {
        "phase": name,
        "checks": len(severities),
        "severities": sorted(set(severities)),
        "reasons": sorted(reasons),
        "sample_ms_median": round(statistics.median(times), 2),
        "sample_ms_max": round(max(times), 2),
        "gpu_load_max": max(loads, default=None),
        "gpu_memory_percent_max": round(max(mem, default=0.0), 1),
        "xid_watch": health.get("xid_watch"),
    }


def main() -> None:
    monitor = HealthMonitor(expected_gpus=1, watch_xids=True)
    print(json.dumps(phase(monitor, "idle", 5.0)))
    import torch

    free, _total = torch.cuda.mem_get_info()
    hog = torch.empty(int(free * 0.97), dtype=torch.uint8, device="cuda")
    stop = threading.Event()

    def burn() -> None:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        while not stop.is_set():
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()

    thread = threading.Thread(target=burn, daemon=True)
    thread.start()
    time.sleep(2.0)
    print(json.dumps(phase(monitor, "busy: 97 % of free memory held, bf16 matmuls", 15.0)))
    stop.set()
    thread.join()
    del hog


if __name__ == "__main__":
    main()
