"""EnergyMeter against a fake RAPL powercap tree and a mocked pynvml module."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from mtd_cache.core import energy
from mtd_cache.core.energy import EnergyMeter, EnergyReading


class FakeClock:
    """A clock the test advances by hand, so wall_s is exact."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_zone(root: Path, zone: str, energy_uj: int, max_uj: int = 10**9, name: str | None = None) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (d / "name").write_text((name or f"package-{zone.split(':')[1]}") + "\n")
    return d


def set_uj(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, a subzone inside package 0 and one listed at top level (as sysfs does)."""
    root = tmp_path / "powercap"
    make_zone(root, "intel-rapl:0", 1_000_000)
    make_zone(root, "intel-rapl:1", 5_000_000)
    make_zone(root / "intel-rapl:0", "intel-rapl:0:0", 7_000_000, name="core")
    make_zone(root, "intel-rapl:0:1", 3_000_000, name="dram")  # top-level alias of a subzone
    return root


@pytest.fixture(autouse=True)
def no_real_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see NVML only when they install a fake one; None in sys.modules makes the import fail."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def meter(root: Path, clock: FakeClock, **kw) -> EnergyMeter:
    return EnergyMeter(rapl_root=root, poll_s=None, clock=clock, **kw)


def test_rapl_sums_packages_only(powercap: Path) -> None:
    clock = FakeClock()
    m = meter(powercap, clock).start()
    set_uj(powercap, "intel-rapl:0", 3_500_000)                    # +2.5 J
    set_uj(powercap, "intel-rapl:1", 6_000_000)                    # +1.0 J
    set_uj(powercap / "intel-rapl:0", "intel-rapl:0:0", 99_000_000)  # subzone: ignored
    set_uj(powercap, "intel-rapl:0:1", 99_000_000)                  # subzone alias: ignored
    clock.t += 2.0
    r = m.stop()
    assert r.wall_s == pytest.approx(2.0)
    assert r.energy_j == pytest.approx(3.5, rel=1e-12)
    assert r.sources == ["rapl:intel-rapl:0", "rapl:intel-rapl:1"]


def test_rapl_wraparound(powercap: Path) -> None:
    # package 0: range 1e9 uJ, counter 999_000_000 -> wraps -> 500_000.
    # increase = 500_000 + 1_000_000_000 - 999_000_000 = 1_500_000 uJ = 1.5 J
    # package 1: 5_000_000 -> 5_250_000 = 0.25 J; total 1.75 J
    set_uj(powercap, "intel-rapl:0", 999_000_000)
    m = meter(powercap, FakeClock()).start()
    set_uj(powercap, "intel-rapl:0", 500_000)
    set_uj(powercap, "intel-rapl:1", 5_250_000)
    assert m.stop().energy_j == pytest.approx(1.75, rel=1e-12)


def test_sampling_catches_two_wraps(powercap: Path) -> None:
    # Each sample sees at most one wrap: 900e6 -> 100e6 (+200e6), -> 50e6 (+950e6)
    # -> 60e6 (+10e6): 1_160_000_000 uJ = 1160 J on package 0, package 1 unchanged.
    set_uj(powercap, "intel-rapl:0", 900_000_000)
    m = meter(powercap, FakeClock()).start()
    for value in (100_000_000, 50_000_000):
        set_uj(powercap, "intel-rapl:0", value)
        m.sample()
    set_uj(powercap, "intel-rapl:0", 60_000_000)
    assert m.stop().energy_j == pytest.approx(1160.0, rel=1e-12)


def test_psys_zone_is_not_summed(powercap: Path) -> None:
    make_zone(powercap, "intel-rapl:2", 0, name="psys")
    m = meter(powercap, FakeClock()).start()
    set_uj(powercap, "intel-rapl:2", 50_000_000)
    r = m.stop()
    assert r.energy_j == 0.0 and "rapl:intel-rapl:2" not in r.sources


def _break_as_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _break_as_garbage(path: Path) -> None:
    path.write_text("not a number\n")


@pytest.mark.parametrize("breaker", [_break_as_directory, _break_as_garbage])
def test_unreadable_package_makes_rapl_unavailable(powercap: Path, breaker) -> None:
    """One unreadable package: no partial CPU sum, so no energy at all here."""
    breaker(powercap / "intel-rapl:1" / "energy_uj")
    r = meter(powercap, FakeClock()).start().stop()
    assert r.energy_j is None and r.sources == []


def test_permission_denied_is_unavailable(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """energy_uj is root-only on current kernels; the test runs as any user, so fake the denial."""
    real_open = open

    def denying_open(path, *args, **kwargs):
        if Path(path).name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(energy, "open", denying_open, raising=False)
    r = meter(powercap, FakeClock()).start().stop()
    assert r.energy_j is None and r.sources == []


def test_counter_unreadable_at_stop_drops_source(powercap: Path) -> None:
    m = meter(powercap, FakeClock()).start()
    _break_as_garbage(powercap / "intel-rapl:0" / "energy_uj")
    assert m.stop().energy_j is None


def test_missing_root_gives_none(tmp_path: Path) -> None:
    clock = FakeClock()
    with meter(tmp_path / "nowhere", clock) as m:
        clock.t += 0.5
    assert m.reading == EnergyReading(wall_s=0.5, energy_j=None, sources=[])
    assert m.reading.as_dict() == {"wall_s": 0.5, "energy_j": None, "energy_sources": []}


class FakeNvml(types.ModuleType):
    """The slice of pynvml the meter uses, with settable millijoule counters."""

    class NVMLError(Exception):
        pass

    def __init__(self, mj: list[int]) -> None:
        super().__init__("pynvml")
        self.mj = list(mj)
        self.inited = 0
        self.unsupported: set[int] = set()

    def nvmlInit(self) -> None:
        self.inited += 1

    def nvmlShutdown(self) -> None:
        self.inited -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.mj)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < len(self.mj):
            raise self.NVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return int(uuid.rsplit("-", 1)[1])

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if h in self.unsupported:
            raise self.NVMLError("Not Supported")
        return self.mj[h]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml([10_000, 2_000_000])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_nvml_sums_visible_devices(nvml: FakeNvml, tmp_path: Path) -> None:
    m = meter(tmp_path / "no-rapl", FakeClock()).start()
    nvml.mj[0] += 1_500   # 1.5 J
    nvml.mj[1] += 250_250  # 250.25 J
    r = m.stop()
    assert r.energy_j == pytest.approx(251.75, rel=1e-12)
    assert r.sources == ["nvml:0", "nvml:1"]
    assert nvml.inited == 0  # shut down again


def test_nvml_follows_cuda_visible_devices(nvml: FakeNvml, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    m = meter(tmp_path / "no-rapl", FakeClock()).start()
    nvml.mj[0] += 1_000_000  # invisible device: not counted
    nvml.mj[1] += 4_000      # 4 J
    r = m.stop()
    assert (r.energy_j, r.sources) == (pytest.approx(4.0), ["nvml:1"])


def test_nvml_and_rapl_add_up(nvml: FakeNvml, powercap: Path) -> None:
    m = meter(powercap, FakeClock()).start()
    nvml.mj[1] += 3_000                        # 3 J
    set_uj(powercap, "intel-rapl:1", 5_500_000)  # 0.5 J
    r = m.stop()
    assert r.energy_j == pytest.approx(3.5, rel=1e-12)
    assert r.sources == ["nvml:0", "nvml:1", "rapl:intel-rapl:0", "rapl:intel-rapl:1"]


def test_nvml_unsupported_device_is_unavailable(nvml: FakeNvml, tmp_path: Path) -> None:
    nvml.unsupported.add(1)
    r = meter(tmp_path / "no-rapl", FakeClock()).start().stop()
    assert r.energy_j is None and nvml.inited == 0


def test_nvml_error_during_run_drops_gpu_energy(nvml: FakeNvml, powercap: Path) -> None:
    m = meter(powercap, FakeClock()).start()
    nvml.unsupported.add(0)
    set_uj(powercap, "intel-rapl:0", 2_000_000)  # 1 J from RAPL survives
    r = m.stop()
    assert r.energy_j == pytest.approx(1.0) and r.sources == ["rapl:intel-rapl:0", "rapl:intel-rapl:1"]


def test_use_flags_switch_kinds_off(nvml: FakeNvml, powercap: Path) -> None:
    r = meter(powercap, FakeClock(), use_nvml=False, use_rapl=False).start().stop()
    assert r.energy_j is None and nvml.inited == 0


def test_background_polling_thread_runs_and_stops(powercap: Path) -> None:
    m = EnergyMeter(rapl_root=powercap, poll_s=0.001).start()
    set_uj(powercap, "intel-rapl:0", 2_000_000)
    r = m.stop()
    assert r.energy_j == pytest.approx(1.0) and r.wall_s >= 0
    assert m._thread is None


def test_stop_before_start_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        meter(tmp_path, FakeClock()).stop()
