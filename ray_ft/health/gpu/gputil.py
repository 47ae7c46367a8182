"""The fallback GPU backend through GPUtil (nvidia-smi): load, memory and temperature only."""

from __future__ import annotations

import concurrent.futures as cf

from ray_ft.health.gpu.reading import GpuBackendUnavailable, GpuReading, error_name

__all__ = ["GPUtilBackend"]


class GPUtilBackend:
    """The fallback through GPUtil (nvidia-smi): load, memory and temperature only.

    Optional (``pip install ray-ft[gputil]``); bounded by a deadline, and failing closed: a
    failed or hung nvidia-smi is a reading that says so, never "no GPU".
    """

    name = "gputil"

    def __init__(self, *, call_timeout: float = 10.0) -> None:
        try:
            import GPUtil
        except Exception as exc:  # ImportError, or distutils missing on Python 3.12
            msg = f"GPUtil is not usable here: {exc}"
            raise GpuBackendUnavailable(msg) from exc
        self._gputil = GPUtil
        self.call_timeout = call_timeout
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray_ft-gputil")

    def read(self) -> list[GpuReading]:
        """One reading per GPU nvidia-smi lists; one error reading when it fails or hangs."""
        future = self._pool.submit(self._gputil.getGPUs)
        try:
            gpus = future.result(timeout=self.call_timeout)
        except cf.TimeoutError:
            return [
                {"id": -1, "hung": True, "error": f"nvidia-smi hung (> {self.call_timeout:g}s)"}
            ]
        except Exception as exc:
            return [{"id": -1, "error": f"nvidia-smi failed: {error_name(exc)}: {exc}"}]
        return [
            {
                "id": g.id,
                "uuid": getattr(g, "uuid", None),
                "load": g.load,
                "memory_used": g.memoryUsed,
                "memory_total": g.memoryTotal,
                "temperature": g.temperature,
                "name": getattr(g, "name", None),
            }
            for g in gpus
        ]
