"""The benchmarks' one set of timers: synchronisation, per-call timing, per-section memory peaks,
and the probe through which they observe the core (helios_backends.probes)."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so the host clock covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_time(fn, device: torch.device, reps: int) -> float:
    """Seconds per call after one warm-up call (cuDNN autotuning), synchronised on CUDA."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def cuda_time(fn, reps: int = 10) -> float:
    """Seconds per call by CUDA events around `reps` calls, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1000


@dataclass
class Timer:
    """Time spent in calls. With sync (diffusers' synchronous pipeline) each call is bracketed by a
    device synchronisation; without, by CUDA events on the calling stream, so the measurement does
    not stop our host from queueing work ahead of the GPU."""

    device: torch.device
    sync: bool = True
    total: float = 0.0
    calls: int = 0
    first_end: float | None = None
    events: list = field(default_factory=list)

    @contextmanager
    def timing(self):
        """Times the work done inside as one call."""
        self.calls += 1
        if self.sync or self.device.type != "cuda":
            sync(self.device)
            t = time.perf_counter()
            yield
            sync(self.device)
            now = time.perf_counter()
            self.total += now - t
            if self.first_end is None:
                self.first_end = now
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.events.append((start, end))

    def wrap(self, fn):
        """fn with each call timed (for diffusers' modules, which offer no probe)."""

        def timed(*args, **kwargs):
            with self.timing():
                return fn(*args, **kwargs)

        return timed

    @property
    def seconds(self) -> float:
        sync(self.device)
        return self.total + sum(a.elapsed_time(b) for a, b in self.events) / 1000


class PeakMeter:
    """Peak GPU memory over a run, and peak allocated within each named kind of call. The caching
    allocator counts in host order, so no synchronisation is needed: before each call the peaks so
    far are kept and the counters reset, after it the call's own peak is read."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.allocated = self.reserved = 0
        self.within: dict[str, int] = {}
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def _keep(self) -> int:
        peak = torch.cuda.max_memory_allocated()
        self.allocated = max(self.allocated, peak)
        self.reserved = max(self.reserved, torch.cuda.max_memory_reserved())
        return peak

    @contextmanager
    def measuring(self, name: str):
        """Keeps the peak allocated inside as one call of `name`."""
        if not self.cuda:
            yield
            return
        self._keep()
        torch.cuda.reset_peak_memory_stats()
        yield
        self.within[name] = max(self.within.get(name, 0), self._keep())

    def wrap(self, name: str, fn):
        def measured(*args, **kwargs):
            with self.measuring(name):
                return fn(*args, **kwargs)

        return measured

    def gib(self, name: str | None = None, reserved: bool = False) -> float:
        """The run's peak allocated (or reserved) so far, or the peak allocated within `name`'s calls."""
        if not self.cuda:
            return float("nan")
        if name is not None:
            return self.within.get(name, 0) / 2**30
        self._keep()
        return (self.reserved if reserved else self.allocated) / 2**30


class RunProbe:
    """The bench's probe of our core (helios_backends.probes.Probe), one per Helios it builds.

    `start` begins a run's figures: a Timer per section (CUDA events, so the host keeps queueing)
    and a PeakMeter within the text, transformer and VAE sections. `calls`, when set to a dict, keeps the
    first transformer call's inputs per latent shape (profile_step replays them).
    """

    MEASURED = ("text", "transformer", "vae")

    def __init__(self):
        self.timers: dict[str, Timer] = {}
        self.meter: PeakMeter | None = None
        self.calls: dict[tuple, tuple] | None = None

    def start(self, device: torch.device) -> tuple[dict[str, Timer], PeakMeter]:
        self.timers = {name: Timer(device, sync=False) for name in ("text", "transformer", "vae")}
        self.meter = PeakMeter(device.type == "cuda")
        return self.timers, self.meter

    def stop(self) -> None:
        self.timers, self.meter = {}, None

    @contextmanager
    def section(self, name: str, *inputs):
        if self.calls is not None and name == "transformer":
            self.calls.setdefault(tuple(inputs[0].shape), inputs)
        with ExitStack() as stack:
            if self.meter is not None and name in self.MEASURED:
                stack.enter_context(self.meter.measuring(name))
            if name in self.timers:
                stack.enter_context(self.timers[name].timing())
            yield
