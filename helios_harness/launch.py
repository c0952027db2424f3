"""Start a backend as a real process, watch its memory, wait until it serves, talk HTTP, stop it.

Generic on purpose (no Helios or engine knowledge): `bench/compare.py` starts `vllm serve`,
`sglang serve` and its own in-process workers with it, and the engine test suites their servers.
Stdlib only, plus psutil (in the core
environment) for the memory of the whole process tree: engines spawn API, engine and worker
processes, and the model lives in a child, so the root's own RSS would miss it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

try:
    import psutil
except ImportError:  # the memory column then says so
    psutil = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_gpu_bytes(smi_lines: list[str], names: dict[int, str]) -> dict[str, int]:
    """Device memory of the tree's processes from `nvidia-smi --query-compute-apps=pid,used_memory`
    rows (csv, noheader, nounits: "PID, MiB"), bytes per "name pid"; processes outside the tree
    (other users of the GPU) are left out. Per process, so a server's extra memory can be placed."""
    used = {}
    for line in smi_lines:
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and int(pid) in names and mib.strip().isdigit():
            used[f"{names[int(pid)]} {int(pid)}"] = int(mib) * 2**20
    return used


def _name(process) -> str:
    try:
        return process.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return "?"


class MemorySampler(threading.Thread):
    """Peak memory of a process and all its descendants, sampled every `interval` seconds.

    CPU: the sum of PSS (proportional set size: a page shared by k processes counts 1/k in each),
    so the torch libraries every engine process maps are counted once, not once per process;
    falls back to RSS where PSS cannot be read. GPU: the sum of the tree's `nvidia-smi` compute
    memory, sampled at most once a second (each query is a subprocess); where nvidia-smi lists no
    process of the tree (a container's PID namespace hides them), the whole device's used memory
    less what it used when sampling began (`gpu_kind` says which was measured).
    """

    def __init__(self, pid: int, gpu: bool = False, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.gpu, self.interval = pid, gpu, interval
        self.peak_host = 0
        self.peak_gpu = 0
        self.gpu_by_process: dict[str, int] = {}  # "name pid" -> that process's own peak, bytes (nvidia-smi rows)
        self.kind = "PSS" if psutil is not None else "n/a"
        self.gpu_kind = "n/a"
        self._gpu_baseline = self._device_used() if gpu else 0
        self._stop_event = threading.Event()

    def tree(self) -> list:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def _host_bytes(self, procs) -> int:
        total = 0
        for p in procs:
            try:
                if self.kind == "PSS":
                    try:
                        total += p.memory_full_info().pss
                        continue
                    except (psutil.AccessDenied, AttributeError):
                        self.kind = "RSS"
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return total

    @staticmethod
    def _smi(query: str) -> list[str]:
        try:
            out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return out.strip().splitlines()

    def _device_used(self) -> int:
        """Used memory of the first GPU, bytes (0 without nvidia-smi)."""
        lines = self._smi("--query-gpu=memory.used")
        return int(lines[0]) * 2**20 if lines and lines[0].strip().isdigit() else 0

    def _gpu_bytes(self, names: dict[int, str]) -> int:
        used = tree_gpu_bytes(self._smi("--query-compute-apps=pid,used_memory"), names)
        for process, size in used.items():
            self.gpu_by_process[process] = max(self.gpu_by_process.get(process, 0), size)
        if used:
            self.gpu_kind = "nvidia-smi, the process tree"
            return sum(used.values())
        if self.gpu_kind == "n/a" or self.gpu_kind.startswith("nvidia-smi, device"):
            self.gpu_kind = "nvidia-smi, device used less its use before start"
            return max(0, self._device_used() - self._gpu_baseline)
        return 0

    def run(self) -> None:
        if psutil is None and not self.gpu:
            return
        last_gpu = 0.0
        while not self._stop_event.is_set():
            names = {self.pid: "root"}  # without psutil (a device image may lack it): the GPU only, by the root's PID
            if psutil is not None:
                try:
                    procs = self.tree()
                except psutil.NoSuchProcess:
                    return
                self.peak_host = max(self.peak_host, self._host_bytes(procs))
                names = {p.pid: _name(p) for p in procs}
            if self.gpu and time.monotonic() - last_gpu >= 1.0:
                last_gpu = time.monotonic()
                self.peak_gpu = max(self.peak_gpu, self._gpu_bytes(names))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


class Launched:
    """A command in its own process group (so stop() ends every process it spawned), logging to a file.

    `started` is taken just before the process is created: start-up times count interpreter
    start, imports and weight loading, as a user waiting for a fresh server sees them.
    `sample_memory=False` (then `memory` is None) for a caller that never reads it, the test
    suites: the sampler reads the whole tree's /proc memory five times a second.
    """

    def __init__(self, command: list[str], log: Path, env: dict | None = None, cwd: Path | None = None, gpu: bool = False,
                 sample_memory: bool = True):
        self.command = command
        self.log = Path(log)
        self._log_file = open(self.log, "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)
        self.memory = MemorySampler(self.proc.pid, gpu=gpu) if sample_memory else None
        if self.memory is not None:
            self.memory.start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, grace: float = 30) -> None:
        if self.memory is not None:
            self.memory.stop()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        else:  # the leader exited; make sure nothing it spawned lingers
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log_file.close()


class Http:
    """A tiny urllib client for one server (the core environment has no httpx/requests guarantee)."""

    def __init__(self, base_url: str, timeout: float = 300):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def request(self, method: str, path: str, json_body=None, form: dict | None = None, timeout: float | None = None) -> tuple[int, bytes]:
        data, headers = None, {}
        if json_body is not None:
            data, headers = json.dumps(json_body).encode(), {"Content-Type": "application/json"}
        elif form is not None:
            data, headers = urllib.parse.urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str) -> tuple[int, dict]:
        status, body = self.request("GET", path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"raw": body[:500].decode(errors="replace")}


def wait_ready(process: Launched, http: Http, path: str = "/health", timeout: float = 420, interval: float = 0.25) -> float:
    """Poll until `path` answers 200; returns the ready time (time.time()).

    Otherwise (it exited, was not ready in time, or the wait was interrupted) stops the process,
    so that no caller leaks a server that never came up, and raises with the log's tail.
    """
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(f"exited with {process.proc.returncode} before it was ready:\n{process.log_tail()}")
            try:
                if http.request("GET", path, timeout=5)[0] == 200:
                    return time.time()
            except OSError:
                pass
            time.sleep(interval)
        raise RuntimeError(f"not ready after {timeout:.0f} s:\n{process.log_tail()}")
    except BaseException:
        process.stop()
        raise
