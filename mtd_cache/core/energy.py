"""Cost accounting: wall time and energy (joules) of a piece of work.

Two hardware counters are read, both cumulative energy counters:

- **GPU** through NVML (``pynvml``, from the optional ``nvidia-ml-py`` package):
  ``nvmlDeviceGetTotalEnergyConsumption`` gives millijoules since the driver
  loaded (Volta and newer), a 64-bit counter that does not wrap in practice.
  Summed over the visible devices: ``CUDA_VISIBLE_DEVICES`` when set (integer
  indices are taken as NVML indices, which matches CUDA only with
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; ``GPU-``/``MIG-`` UUIDs are exact), else all.
- **CPU packages** through Linux RAPL powercap: ``<root>/intel-rapl:N/energy_uj``
  in microjoules, one zone per package. Only top-level package zones are
  summed: subzones (``intel-rapl:N:M``: core, uncore, dram) are parts of or
  beside the package and would double count, and the ``psys`` zone is the
  whole platform, which already contains the packages. The counter wraps at
  ``max_energy_range_uj``; one wrap between two samples is corrected, so the
  meter samples in a background thread every ``poll_s`` seconds, well inside
  the shortest wrap period (about 230 s for a 280 W package with a 65 kJ range).

A source kind (``nvml`` or ``rapl``) counts only when every one of its counters
is readable at every sample: a partial sum would look like a complete number.
When no kind is readable the energy is ``None``; a number is never invented.
Energy is what the devices drew in that time, other processes' work included.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")  # intel-rapl:0, not intel-rapl:0:0


@dataclass(frozen=True)
class EnergyReading:
    """What a meter measured: seconds, joules (``None`` if unknown) and the counters summed."""

    wall_s: float
    energy_j: float | None
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The fields as the run record stores them."""
        return {"wall_s": self.wall_s, "energy_j": self.energy_j, "energy_sources": list(self.sources)}


@dataclass
class _Counter:
    """One cumulative counter: ``read()`` in native units, ``scale`` to joules, ``wrap`` its range."""

    name: str
    read: Callable[[], int]
    scale: float
    wrap: int | None = None


@dataclass
class _Group:
    """The counters of one source kind; the kind is dropped as a whole when any read fails."""

    kind: str
    counters: list[_Counter]
    last: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)
    failed: bool = False

    def start(self) -> None:
        self.total = [0] * len(self.counters)
        try:
            self.last = [c.read() for c in self.counters]
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("energy source %s unreadable at start (%s); its energy is dropped", self.kind, exc)
            self.failed = True

    def sample(self) -> None:
        if self.failed:
            return
        try:
            now = [c.read() for c in self.counters]
            deltas = [_delta(p, n, c.wrap, c.name) for c, p, n in zip(self.counters, self.last, now, strict=True)]
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("energy source %s became unreadable (%s); its energy is dropped", self.kind, exc)
            self.failed = True
            return
        self.total = [t + d for t, d in zip(self.total, deltas, strict=True)]
        self.last = now

    def joules(self) -> float:
        return sum(t * c.scale for t, c in zip(self.total, self.counters, strict=True))


def _delta(prev: int, cur: int, wrap: int | None, name: str) -> int:
    """Counter increase from ``prev`` to ``cur``; a decrease is one wrap-around at ``wrap``."""
    if cur >= prev:
        return cur - prev
    if wrap is None:
        raise RuntimeError(f"energy counter {name} went backwards ({prev} -> {cur})")
    return cur + wrap - prev


def _read_int(path: Path) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().strip())


def _rapl_counters(root: Path) -> list[_Counter]:
    """The package zones under ``root``; raises OSError/ValueError when one is unreadable."""
    zones = sorted(p for p in root.glob("intel-rapl:*") if _PACKAGE_ZONE.match(p.name))
    counters = []
    for zone in zones:
        name_file = zone / "name"
        label = name_file.read_text().strip() if name_file.exists() else zone.name
        if label == "psys":  # whole platform: contains the packages
            continue
        wrap = _read_int(zone / "max_energy_range_uj")
        counter = _Counter(f"rapl:{zone.name}", lambda p=zone / "energy_uj": _read_int(p), 1e-6, wrap)
        counter.read()  # readable now, or the kind is unavailable
        counters.append(counter)
    return counters


def _visible_handles(nvml: Any) -> list[tuple[str, Any]]:
    """(name, handle) of each visible GPU, following ``CUDA_VISIBLE_DEVICES`` when it is set."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return [(f"nvml:{i}", nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        if tok.startswith(("GPU-", "MIG-")):
            handles.append((f"nvml:{tok}", nvml.nvmlDeviceGetHandleByUUID(tok)))
        else:
            handles.append((f"nvml:{int(tok)}", nvml.nvmlDeviceGetHandleByIndex(int(tok))))
    return handles


def _nvml_counters() -> tuple[Any, list[_Counter]]:
    """(module, counters) for the visible GPUs; ``(None, [])`` when NVML is absent or unusable."""
    try:
        import pynvml  # optional: nvidia-ml-py
    except ImportError:
        return None, []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError has many subclasses; no driver is the common one
        log.debug("NVML unavailable: %s", exc)
        return None, []
    try:
        counters = [_Counter(name, _nvml_reader(pynvml, h), 1e-3) for name, h in _visible_handles(pynvml)]
        for c in counters:
            c.read()
    except Exception as exc:  # not supported (pre-Volta, MIG), bad index
        log.debug("NVML energy counter unavailable: %s", exc)
        _nvml_shutdown(pynvml)
        return None, []
    return pynvml, counters


def _nvml_reader(nvml: Any, handle: Any) -> Callable[[], int]:
    """A reader of one GPU's millijoule counter; NVML's own errors become RuntimeError."""
    def read() -> int:
        try:
            return int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except Exception as exc:  # pynvml.NVMLError is not an OSError
            raise RuntimeError(f"NVML: {exc}") from exc
    return read


def _nvml_shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:
        log.debug("nvmlShutdown failed: %s", exc)


class EnergyMeter:
    """Measure wall time and energy of a block, as a context manager or with start/stop.

    Usage (``energy_j`` is None when no counter is readable)::

        with EnergyMeter() as meter:
            train()
        record.update(meter.reading.as_dict())

    ``rapl_root`` is injectable for tests; ``use_nvml``/``use_rapl`` switch a kind
    off; ``poll_s`` is the background sampling period (``None``: sample only at
    start and stop, or when ``sample()`` is called).
    """

    def __init__(self, rapl_root: str | os.PathLike = RAPL_ROOT, use_nvml: bool = True, use_rapl: bool = True,
                 poll_s: float | None = 60.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.rapl_root = Path(rapl_root)
        self.use_nvml, self.use_rapl, self.poll_s, self.clock = use_nvml, use_rapl, poll_s, clock
        self.reading: EnergyReading | None = None
        self._groups: list[_Group] = []
        self._nvml: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None

    def start(self) -> EnergyMeter:
        """Open the readable counters and start the clock."""
        if self._t0 is not None:
            raise RuntimeError("EnergyMeter already started")
        self._groups = self._open_groups()
        for g in self._groups:
            g.start()
        self._t0 = self.clock()
        if self.poll_s is not None and self._groups:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, daemon=True, name="mtd-energy")
            self._thread.start()
        return self

    def sample(self) -> None:
        """Fold the counters' increase since the last sample in (catches RAPL wrap-arounds)."""
        with self._lock:
            for g in self._groups:
                g.sample()

    def peek(self) -> EnergyReading:
        """What the meter has measured so far, without stopping it (a checkpoint's cost)."""
        if self._t0 is None:
            raise RuntimeError("EnergyMeter.peek() before start()")
        self.sample()
        good = [g for g in self._groups if not g.failed]
        return EnergyReading(wall_s=self.clock() - self._t0, energy_j=sum(g.joules() for g in good) if good else None,
                             sources=[c.name for g in good for c in g.counters])

    def stop(self) -> EnergyReading:
        """Stop the clock, take a last sample and return the reading (also kept as ``.reading``)."""
        if self._t0 is None:
            raise RuntimeError("EnergyMeter.stop() before start()")
        wall = self.clock() - self._t0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()
        good = [g for g in self._groups if not g.failed]
        energy = sum(g.joules() for g in good) if good else None
        sources = [c.name for g in good for c in g.counters]
        if self._nvml is not None:
            _nvml_shutdown(self._nvml)
            self._nvml = None
        self._t0 = None
        self.reading = EnergyReading(wall_s=wall, energy_j=energy, sources=sources)
        log.debug("measured %.3f s, %s J from %s", wall, energy, sources or "no energy source")
        return self.reading

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _poll(self) -> None:
        assert self.poll_s is not None
        while not self._stop.wait(self.poll_s):
            self.sample()

    def _open_groups(self) -> list[_Group]:
        groups = []
        if self.use_nvml:
            self._nvml, counters = _nvml_counters()
            if counters:
                groups.append(_Group("nvml", counters))
        if self.use_rapl:
            try:
                counters = _rapl_counters(self.rapl_root)
            except (OSError, ValueError) as exc:  # e.g. energy_uj is root-only since 2020
                log.debug("RAPL unavailable under %s: %s", self.rapl_root, exc)
                counters = []
            if counters:
                groups.append(_Group("rapl", counters))
        return groups
