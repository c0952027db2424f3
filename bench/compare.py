"""One Helios request, same seed, through every backend on this machine: a table and a bar chart.

    env=$(scripts/setup-env core)
    "$env/bin/python" bench/compare.py --gamma 0.3                          # built-in tiny model, CPU
    "$env/bin/python" bench/compare.py --model /models/Helios-Distilled --device cuda \\
        --height 384 --width 640 --num-frames 240 --steps 2 2 2 --backends core diffusers vllm-plugin

Backends (each a fresh process, one at a time, killed when done):
  core           our core (`Helios.stream`) in a subprocess of the core env: a fresh process, so its
                 start-up counts interpreter, imports and weights like a server's, and its memory
                 is its own rather than shared with this script's
  diffusers      diffusers' HeliosPipeline / HeliosPyramidPipeline, likewise in the core env
  sglang-plugin  `sglang serve` with SGLANG_EXTERNAL_MODEL_PACKAGE=helios_sglang (sglang env)
  vllm-plugin    `vllm serve DIR --omni` with our vllm.general_plugins entry point (vllm env)
  vllm-plugin-stream  the same with --diffusion-streaming-output, over ws://.../v1/realtime/video:
                 each chunk is sent as soon as the core has decoded it, so its first chunk is timed
  sglang-native  SGLang's own Helios: no external package, and SGLANG_PLUGINS naming every
                 sglang.multimodal_gen.plugins entry point except ours, so it is not loaded either
  vllm-native    vLLM-Omni's own Helios: VLLM_PLUGINS naming every plugin except our model plugin
                 (our CPU omni platform stays: without it vLLM-Omni has no CPU platform at all)
Servers bind 127.0.0.1 on free ports and are timed over HTTP: POST /v1/videos, poll the job
every 50 ms, GET the mp4 (the stream row: connect, session.start, session.done). Every request field is resolved by the core's plan() first and sent
explicitly, so no backend falls back to its own defaults. `core` always runs: it is the reference.

Per backend: start-up (process start -> ready: /health 200, or weights loaded), the first
request (cold), then the timed request: end-to-end (request -> mp4 bytes), FPS (frames out / that
time), time to first chunk where a backend hands a chunk out before the end, peak memory of the
process tree (PSS on CPU, nvidia-smi on a GPU) and whether the output equals the core's:
diffusers by its raw frames (within 1/255, as tests/test_sampler_parity.py), the engines by the
mp4 they serve against the core's frames passed through that engine's own mp4 writer (bit-exact;
H.264 on random-weight noise moves pixels by tens of levels, so raw frames cannot be compared).

Writes OUT/compare.md, OUT/compare.png, OUT/compare.json; logs and videos under OUT/work/.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from statistics import median
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/compare.py`: the repository root, for helios_harness

from helios_harness.launch import Http, Launched, free_port, wait_ready  # noqa: E402

BACKENDS = ("core", "diffusers", "sglang-plugin", "vllm-plugin", "vllm-plugin-stream", "sglang-native", "vllm-native")
ENV_OF = {"core": "core", "diffusers": "core", "sglang-plugin": "sglang", "sglang-native": "sglang",
          "vllm-plugin": "vllm", "vllm-plugin-stream": "vllm", "vllm-native": "vllm"}
# Our own entry points in the engines' plugin groups (pyproject.toml), by the module they name.
OUR_VLLM_MODEL_PLUGIN = "helios_vllm:register"
OUR_SGLANG_PLUGIN_MODULE = "helios_sglang"
HUB_NAMES = {"base": "Helios-Base", "mid": "Helios-Mid", "distilled": "Helios-Distilled"}
POLL_S = 0.05
FPS_OUT = 24


@dataclass
class Row:
    backend: str
    status: str = "ok"  # ok | failed | unavailable
    reason: str = ""
    startup_s: float | None = None
    cold_s: float | None = None
    e2e_s: float | None = None
    frames: int | None = None
    fps: float | None = None
    ttfc_s: float | None = None
    ttfc_note: str = ""
    peak_host_mib: float | None = None
    peak_gpu_mib: float | None = None
    mem_kind: str = ""
    equal: str = "-"  # yes | no | -
    equal_note: str = ""
    notes: list[str] = field(default_factory=list)


# -- request ------------------------------------------------------------------------------------


def resolve_request(args, folder: Path) -> tuple[dict, dict]:
    """The request with every value the core's plan() resolved (sent explicitly to every backend), and plan facts."""
    from helios_backends.loading import plan_for_folder, read_configs
    from helios_backends.request import GenerationRequest
    from helios_backends.media_read import read_image, read_video

    configs = read_configs(folder)
    variant = configs.pipeline.variant
    base = variant == "base"
    if args.steps and base and len(args.steps) != 1:
        raise SystemExit("--steps: Base takes one step count")
    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, task=args.task,
        image=read_image(args.image) if args.image else None, video=read_video(args.video) if args.video else None,
        height=args.height, width=args.width, num_frames=args.num_frames, seed=args.seed,
        num_inference_steps=args.steps[0] if args.steps and base else None,
        pyramid_steps=tuple(args.steps) if args.steps and not base else None, guidance_scale=args.guidance_scale,
    )
    p = plan_for_folder(folder, request)
    fields = dict(prompt=args.prompt, negative_prompt=p.negative_prompt, task=p.task, height=p.height, width=p.width,
                  num_frames=p.num_frames, seed=p.seed, guidance_scale=p.guidance_scale, max_sequence_length=p.max_sequence_length)
    if base:
        fields["num_inference_steps"] = p.steps[0]
    else:
        fields.update(pyramid_steps=list(p.steps), use_zero_init=p.use_zero_init, zero_steps=p.zero_steps,
                      is_amplify_first_chunk=p.is_amplify_first_chunk)
    kind = configs.scheduler.kind
    facts = dict(variant=variant, output_frames=p.output_frames, chunks=p.num_chunks, gamma=configs.scheduler.gamma,
                 first_chunk_fraction=sum(p.chunk_steps(0, kind)) / p.total_steps(kind))
    return fields, facts


def with_gamma(folder: Path, gamma: float, work: Path) -> Path:
    """A view of `folder` with the scheduler's gamma replaced: every file a symlink but the scheduler config.

    diffusers factors the pyramid's block-noise covariance in fp32, which fails at the released
    gamma 1/3 on CPU (README: known difference), so a CPU comparison that includes diffusers
    runs every backend on one folder with a nearby gamma.
    """
    target = work / f"model-gamma-{gamma:g}"
    shutil.rmtree(target, ignore_errors=True)
    for path in sorted(folder.rglob("*")):
        dest = target / path.relative_to(folder)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif path.relative_to(folder) == Path("scheduler/scheduler_config.json"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps({**json.loads(path.read_text()), "gamma": gamma}, indent=2))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path.resolve())
    return target


def b64_file(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


# -- environments and helpers ---------------------------------------------------------------------


class Envs:
    """Project environments by name, through scripts/setup-env (reuses a built one; builds a missing one),
    or given folders shaped like one (bin/python, bin/<engine>): a device without a registry
    (bench/engines-gpu)."""

    def __init__(self, given: dict[str, Path] | None = None):
        self.paths: dict[str, Path | str] = dict(given or {})

    def get(self, name: str) -> Path:
        """The env path, or raise RuntimeError saying why there is none."""
        if name not in self.paths:
            if not (REPO / "requirements" / f"{name}.txt").is_file():
                self.paths[name] = f"no requirements/{name}.txt in this checkout"
            else:
                done = subprocess.run([str(REPO / "scripts" / "setup-env"), name], capture_output=True, text=True)
                if done.returncode:
                    self.paths[name] = f"scripts/setup-env {name} failed: {done.stderr.strip()[-300:]}"
                else:
                    self.paths[name] = Path(done.stdout.strip().splitlines()[-1])
        value = self.paths[name]
        if isinstance(value, str):
            raise RuntimeError(value)
        return value


def worker(env: Path, *args: str, timeout: float = 600, device: str = "cpu") -> str:
    """Run compare_worker.py in an env's python; its stdout, or RuntimeError with its stderr."""
    done = subprocess.run([str(env / "bin" / "python"), str(REPO / "bench" / "compare_worker.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=base_env(device))
    if done.returncode:
        raise RuntimeError(f"compare_worker {' '.join(args[:2])} failed: {last_error(done.stderr) or done.stderr[-300:]}")
    return done.stdout


def base_env(device: str = "cpu") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env["TORCHDYNAMO_DISABLE"] = "1"  # no Inductor builds of the engines' compiled paths on CPU
    return env


ANSI = re.compile(r"\x1b\[[0-9;]*m")
ADDRESS = re.compile(r" at 0x[0-9a-f]+")
# What a few engine errors mean, read from the engines' sources (shared/notes/engines.md): the
# measured error stays in the row, this only says where it comes from.
KNOWN_CAUSES = {
    "fused_norm_scale_shift_cpu": "SGLang's own Helios DiT calls fused norm ops that exist only in a CPU build of sgl-kernel, "
                                  "which is not on PyPI (its GPU path uses other kernels; not tried here)",
    "No forward implementation for platform": "vLLM-Omni's own attention layers dispatch only on cuda/hip/npu/xpu/musa, so its "
                                              "Helios cannot run on a CPU platform (ours serves only our core); not tried on a GPU here",
}
OFFLOAD_LINE = re.compile(r"Helios core: offload=\S+.*")
RELEASED_LINE = re.compile(r"Helios core: request released; offloaded blocks on the device: (\[.*?\])")
ERROR_LINE = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)")


def last_error(text: str) -> str:
    """The last `SomethingError: message` line of a log, without colour codes (the reason a run failed)."""
    found = ""
    for line in ANSI.sub("", text).splitlines():
        m = ERROR_LINE.search(line)
        if m:
            found = f"{m.group(1)}: {ADDRESS.sub('', m.group(2)).strip()}"
    return found[:300]


def explain(reason: str) -> str:
    for needle, cause in KNOWN_CAUSES.items():
        if needle in reason:
            return f"{reason} -- {cause}"
    return reason


# -- comparing outputs ---------------------------------------------------------------------------


def difference(a, b) -> dict:
    import numpy as np

    if a.shape != b.shape:
        return {"shape": f"{a.shape} vs {b.shape}"}
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float((d.astype(np.float64) ** 2).mean())
    return {"max": int(d.max()), "mean": float(d.mean()), "psnr": math.inf if mse == 0 else 10 * math.log10(255**2 / mse)}


def describe(diff: dict) -> str:
    if "shape" in diff:
        return f"shape {diff['shape']}"
    psnr = "inf" if math.isinf(diff["psnr"]) else f"{diff['psnr']:.1f} dB"
    return f"max |d| {diff['max']}/255, mean {diff['mean']:.2f}, PSNR {psnr}"


# -- the bench -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, folder: Path, request: dict, facts: dict, work: Path):
        self.args, self.folder, self.request, self.facts, self.work = args, folder, request, facts, work
        self.envs = Envs(args.env)
        self.gpu = args.device.startswith("cuda")
        self.core_frames = None  # (T, H, W, 3) uint8 from the core row: the reference
        self.references: dict[str, tuple] = {}  # engine -> (raw, served) core frames from its env

    def run(self, backend: str) -> Row:
        row = Row(backend)
        if backend == "diffusers" and self.args.offload != "none":
            row.status, row.reason = "unavailable", "--offload: this bench runs diffusers resident (bench/bench_offload.py has its group offloading)"
            return row
        try:
            env = self.envs.get(ENV_OF[backend])
        except RuntimeError as exc:
            row.status, row.reason = "unavailable", str(exc)
            return row
        print(f"== {backend} ({env})", flush=True)
        try:
            if backend in ("core", "diffusers"):
                self.run_worker(row, env)
            else:
                self.run_engine(row, env)
        except Exception as exc:  # the row says why; the other backends still run
            row.status = row.status if row.status != "ok" else "failed"
            row.reason = row.reason or f"{type(exc).__name__}: {exc}"[:400]
        if row.status == "ok" and row.e2e_s:
            row.fps = row.frames / row.e2e_s
        row.reason = explain(ADDRESS.sub("", row.reason))
        return row

    # -- in-process backends, each in a fresh worker process --

    def run_worker(self, row: Row, env: Path) -> None:
        import numpy as np

        out = self.work / row.backend
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        self.write_spec(out / "spec.json")
        command = [str(env / "bin" / "python"), str(REPO / "bench" / "compare_worker.py"), "run", row.backend,
                   str(out / "spec.json"), str(out)]
        proc = Launched(command, out / "worker.log", env=base_env(self.args.device), gpu=self.gpu)
        try:
            proc.wait(timeout=self.args.timeout)
        finally:
            proc.stop()
            self.memory(row, proc)
        result_path = out / "result.json"
        if not result_path.is_file():
            raise RuntimeError(f"worker exited with {proc.proc.returncode}: {last_error(proc.log_tail()) or proc.log_tail(300)}")
        result = json.loads(result_path.read_text())
        if "error" in result:
            row.status, row.reason = "failed", result["error"][:400]
            if "cholesky" in result["error"].lower() and row.backend == "diffusers":
                row.reason += (f" (diffusers' fp32 Cholesky of the block-noise covariance fails at gamma {self.facts['gamma']:.4g};"
                               " rerun with --gamma 0.3)")
            return
        runs = result["runs"]
        if row.peak_gpu_mib is None and result.get("cuda_peak_reserved_mib"):
            row.peak_gpu_mib = result["cuda_peak_reserved_mib"]
            row.notes.append("GPU memory: torch.cuda.max_memory_reserved (nvidia-smi did not list the process)")
        row.startup_s = result["ready"] - proc.started
        row.cold_s = result["warmup_s"][0] if result["warmup_s"] else None
        row.e2e_s = median([r["done"] - r["start"] for r in runs])
        row.frames = result["frames"]
        if runs[0]["first_chunk"]:
            row.ttfc_s = median([r["first_chunk"] - r["start"] for r in runs])
        row.ttfc_note = result.get("first_chunk_how", "")
        if runs[0].get("first_chunk_internal"):
            internal = median([r["first_chunk_internal"] - r["start"] for r in runs])
            row.ttfc_note += f" (its first chunk is decoded internally at {internal:.2f} s)"
        frames = np.load(out / "frames.npy")
        if row.backend == "core":
            self.core_frames = frames
            row.equal, row.equal_note = "ref", "the reference"
        elif self.args.dtype == "float32":
            self.judge(row, frames, self.core_frames, tolerance=1, what="raw frames vs core's raw frames")
        else:  # two implementations in bf16 round differently: close, not equal, is what can be asked
            diff = difference(frames, self.core_frames)
            row.equal = "close" if diff.get("psnr", 0) >= 30 else "no"
            row.equal_note = f"bf16, judged close at PSNR >= 30 dB: raw frames vs core's raw frames: {describe(diff)}"

    def write_spec(self, path: Path, offload: str | None = None) -> None:
        spec = dict(model=str(self.folder), device=self.args.device, dtype=self.args.dtype, vae_dtype=self.args.vae_dtype,
                    offload=offload or self.args.offload, warmup=self.args.warmup,
                    repeats=self.args.repeats, fps=FPS_OUT, request=self.request, image=self.args.image, video=self.args.video)
        path.write_text(json.dumps(spec, indent=2))

    def judge(self, row: Row, frames, reference, tolerance: int, what: str) -> None:
        if reference is None:
            row.equal, row.equal_note = "-", "no core reference (core failed)"
            return
        diff = difference(frames, reference)
        ok = "shape" not in diff and diff["max"] <= tolerance
        row.equal = "yes" if ok else "no"
        row.equal_note = f"{what}: {describe(diff)}"

    def memory(self, row: Row, proc: Launched) -> None:
        row.peak_host_mib = proc.memory.peak_host / 2**20 if proc.memory.peak_host else None
        row.peak_gpu_mib = proc.memory.peak_gpu / 2**20 if proc.memory.peak_gpu else None
        row.mem_kind = proc.memory.kind
        if row.peak_gpu_mib:
            by_process = "; ".join(f"{name}: {size >> 20} MiB" for name, size in proc.memory.gpu_by_process.items())
            row.notes.append(f"GPU memory: {proc.memory.gpu_kind}" + (f" (each process's own peak: {by_process})" if by_process else ""))

    # -- engine servers --

    def engine_command(self, backend: str, env: Path, port: int, out: Path) -> tuple[list[str], dict]:
        cpu = not self.gpu
        environ = base_env(self.args.device)
        host = ["--host", "127.0.0.1", "--port", str(port)]
        if backend.startswith("vllm"):
            command = [str(env / "bin" / "vllm"), "serve", str(self.folder), "--omni", *host, "--dtype", self.args.dtype]
            if self.args.vae_dtype != "float32":
                command += ["--additional-config", json.dumps({"helios": {"vae_dtype": self.args.vae_dtype}})]
            if self.args.offload == "layer":
                command.append("--enable-layerwise-offload")
            if cpu:
                command.append("--enforce-eager")  # no CUDA graphs / compilation on CPU
            if backend == "vllm-plugin-stream":
                command.append("--diffusion-streaming-output")
            if backend == "vllm-native":
                plugins = json.loads(worker(env, "plugins", "vllm"))
                keep = sorted({name for group in plugins.values() for name, value in group.items() if value != OUR_VLLM_MODEL_PLUGIN})
                environ["VLLM_PLUGINS"] = ",".join(keep)  # vLLM's own filter over every plugin group
            return command, environ
        native = backend == "sglang-native"
        precision = "fp32" if self.args.dtype == "float32" else "bf16"
        config = {"dit_precision": precision, "vae_precision": {"float32": "fp32", "bfloat16": "bf16"}[self.args.vae_dtype]}
        command = [str(env / "bin" / "sglang"), "serve", "--model-path", str(self.folder), *host, "--warmup-mode", "off",
                   "--output-path", str(out / "outputs")]
        if self.args.offload == "layer":
            command += ["--dit-layerwise-offload", "true"]
        if cpu:
            environ.update(SGLANG_DIFFUSION_PLATFORM_OVERRIDE="cpu")
        environ.pop("SGLANG_EXTERNAL_MODEL_PACKAGE", None)
        if native:
            plugins = json.loads(worker(env, "plugins", "sglang"))["sglang.multimodal_gen.plugins"]
            others = [n for n, v in plugins.items() if v.split(":")[0].split(".")[0] != OUR_SGLANG_PLUGIN_MODULE]
            environ["SGLANG_PLUGINS"] = ",".join(others) or "none"  # non-empty: SGLang loads only the names listed
            # Their Helios takes its compute dtype and pyramid settings from the pipeline config, and
            # resolves a local folder to its configs only by a hub name.
            config["precision"] = precision
            config["gamma"] = self.facts["gamma"]
            if "pyramid_steps" in self.request:
                config.update(pyramid_num_inference_steps_list=self.request["pyramid_steps"],
                              is_amplify_first_chunk=self.request["is_amplify_first_chunk"], zero_steps=self.request["zero_steps"])
            command += ["--backend", "sglang", "--model-id", HUB_NAMES[self.facts["variant"]]]
        else:
            environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = OUR_SGLANG_PLUGIN_MODULE
        (out / "pipeline_config.json").write_text(json.dumps(config))
        command += ["--pipeline-config-path", str(out / "pipeline_config.json")]
        return command, environ

    def engine_request(self, backend: str) -> tuple[dict | None, dict | None]:
        """(JSON body, form) for POST /v1/videos: SGLang takes JSON, vLLM-Omni a form with extra_params."""
        r = self.request
        common = dict(prompt=r["prompt"], negative_prompt=r["negative_prompt"], width=r["width"], height=r["height"],
                      num_frames=r["num_frames"], seed=r["seed"], fps=FPS_OUT, guidance_scale=r["guidance_scale"])
        if "num_inference_steps" in r:
            common["num_inference_steps"] = r["num_inference_steps"]
        helios = {k: r[k] for k in ("pyramid_steps", "use_zero_init", "zero_steps", "is_amplify_first_chunk") if k in r}
        media = {}
        if self.args.image:
            media["image"] = b64_file(self.args.image)
        if self.args.video:
            media["video"] = b64_file(self.args.video)
        if backend == "sglang-plugin":
            return {**common, **helios, "max_sequence_length": r["max_sequence_length"], **media}, None
        if backend == "sglang-native":
            return common, None  # steps and DMD settings are in its pipeline config
        if backend == "vllm-plugin-stream":  # the websocket's session.start: JSON, extra_params an object
            return {**common, "extra_params": {**helios, **media}}, None
        if backend == "vllm-plugin":
            extra = {**helios, **media}
        else:  # vLLM-Omni's own Helios spells them its own way (model_extras/helios.py)
            extra = {}
            if "pyramid_steps" in r:
                extra = dict(is_enable_stage2=True, pyramid_num_stages=len(r["pyramid_steps"]),
                             pyramid_num_inference_steps_list=r["pyramid_steps"], is_amplify_first_chunk=r["is_amplify_first_chunk"],
                             use_cfg_zero_star=self.facts["variant"] == "mid", use_zero_init=r["use_zero_init"], zero_steps=r["zero_steps"])
        return None, {**{k: str(v) for k, v in common.items()}, "extra_params": json.dumps(extra)}

    def run_engine(self, row: Row, env: Path) -> None:
        from helios_backends.media_read import decode_mp4

        backend = row.backend
        if backend.endswith("native") and self.request["task"] != "t2v":
            row.status = "unavailable"
            row.reason = ("SGLang's own Helios is T2V only" if backend == "sglang-native"
                          else "this bench sends vLLM-Omni's own Helios T2V requests only")
            return
        out = self.work / backend
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        port = free_port()
        command, environ = self.engine_command(backend, env, port, out)
        (out / "command.txt").write_text(" ".join(command) + "\n" + json.dumps({k: v for k, v in environ.items() if k.startswith(("SGLANG", "VLLM"))}))
        http = Http(f"http://127.0.0.1:{port}", timeout=self.args.timeout)
        proc = Launched(command, out / "server.log", env=environ, cwd=out, gpu=self.gpu)
        try:
            try:
                ready = wait_ready(proc, http, timeout=self.args.timeout)
            except RuntimeError as exc:
                row.status, row.reason = "failed", f"start-up: {last_error(str(exc)) or str(exc)[-300:]}"
                return
            row.startup_s = ready - proc.started
            body, form = self.engine_request(backend)
            timings = []
            if backend == "vllm-plugin-stream":
                timings = self.stream(env, port, body, out)
            else:
                for i in range(self.args.warmup + self.args.repeats):
                    timings.append(self.job(http, body, form, out / "video.mp4"))
                    if "error" in timings[-1]:
                        break
            if "error" in timings[-1]:
                row.status, row.reason = "failed", f"request: {timings[-1]['error']}"
                return
        finally:
            proc.stop()
            self.memory(row, proc)
        log = proc.log.read_text(errors="replace")
        if backend.startswith("sglang"):  # which pipeline really ran: our stages carry their own names
            ours = "helios_plan_stage" in log
            if ours != (backend == "sglang-plugin"):
                row.status = "failed"
                row.reason = f"the log shows {'our plugin' if ours else 'another pipeline'} serving, not the {backend} pipeline"
                return
        ran = OFFLOAD_LINE.search(log)  # what the engine's resolved settings gave the core (SGLang may offload by itself)
        if ran:
            row.notes.append(f"the plugin's log: {ran.group(0).strip()}")
        released = RELEASED_LINE.findall(log)
        if released:
            row.notes.append(f"after each of {len(released)} requests the offloaded blocks left on the device: {sorted(set(released))}")
        if timings[-1].get("engine_peak_memory_mb"):
            row.notes.append(f"the engine's own peak memory figure: {timings[-1]['engine_peak_memory_mb']:.0f} MB")
        if self.args.warmup:
            row.cold_s = timings[0]["e2e"]
        timed = timings[self.args.warmup:]
        row.e2e_s = median([t["e2e"] for t in timed])
        denoised = [t["first_chunk_denoised"] for t in timed if t.get("first_chunk_denoised") is not None]
        if backend == "vllm-plugin-stream":
            row.ttfc_s = median([t["first_chunk"] for t in timed])
            row.ttfc_note = f"first media chunk on the websocket ({timed[-1]['chunks']} chunks streamed)"
        elif denoised and self.facts["chunks"] > 1:
            row.ttfc_note = f"n/a: the job API hands out the whole mp4 (chunk 1 denoised at {median(denoised):.2f} s, from job progress)"
        else:
            row.ttfc_note = "n/a: the job API hands out the whole mp4 (job progress " + (
                "per step)" if timed[-1]["progress_steps"] > 2 else "only 0 -> 100)")
        frames = decode_mp4(out / "video.mp4")
        row.frames = len(frames)
        if self.core_frames is None:
            row.equal, row.equal_note = "-", "no core reference (core failed)"
            return
        engine = "vllm-stream" if backend == "vllm-plugin-stream" else backend.split("-")[0]
        raw, served = self.served_reference(engine, env)
        self.judge(row, frames, served, tolerance=0, what=f"served video vs the core's frames (run in the {engine.split('-')[0]} env) through {engine}'s writer")
        row.notes.append(f"core in the {engine.split('-')[0]} env vs in the core env, raw frames: {describe(difference(raw, self.core_frames))}")
        row.notes.append(f"served vs core's raw frames (H.264 loss): {describe(difference(frames, self.core_frames))}")

    def served_reference(self, engine: str, env: Path):
        """(raw, served) core frames computed in the engine's env, through its writer; cached per engine."""
        import numpy as np

        if engine not in self.references:
            out = self.work / f"core-in-{engine}-env"
            out.mkdir(parents=True, exist_ok=True)
            self.write_spec(out / "spec.json", offload="none")  # offload never changes the frames (tests/test_offload.py)
            worker(env, "served-reference", engine, str(out / "spec.json"), str(out), timeout=self.args.timeout, device=self.args.device)
            self.references[engine] = (np.load(out / "raw.npy"), np.load(out / "served.npy"))
        return self.references[engine]

    def stream(self, env: Path, port: int, start: dict, out: Path) -> list[dict]:
        """Warm-up and timed streaming sessions (the websocket client runs in the vllm env, which has one)."""
        (out / "session_start.json").write_text(json.dumps(start))
        sessions = worker(env, "stream", f"ws://127.0.0.1:{port}/v1/realtime/video", str(out / "session_start.json"),
                          str(self.args.warmup + self.args.repeats), str(out / "video.mp4"), timeout=self.args.timeout * 2,
                          device=self.args.device)
        timings = []
        for s in json.loads(sessions.strip().splitlines()[-1]):
            if "error" in s:
                return timings + [{"error": s["error"]}]
            timings.append({"e2e": s["done"] - s["start"], "first_chunk": s["first_chunk"] - s["start"], "chunks": s["chunks"]})
        return timings

    def job(self, http: Http, body: dict | None, form: dict | None, mp4: Path) -> dict:
        """POST a job, poll it, fetch its mp4: timings from POST to the mp4 bytes in hand."""
        start = time.time()
        status, payload = http.request("POST", "/v1/videos", json_body=body, form=form)
        if status != 200:
            return {"error": f"POST {status}: {payload[:300].decode(errors='replace')}"}
        job_id = json.loads(payload)["id"]
        timing, progress_seen = {}, set()
        threshold = 100 * self.facts["first_chunk_fraction"]
        deadline = time.monotonic() + self.args.timeout
        while True:
            status, state = http.get_json(f"/v1/videos/{job_id}")
            if status != 200:
                return {"error": f"GET job {status}: {str(state)[:300]}"}
            progress = state.get("progress") or 0
            progress_seen.add(progress)
            if "first_chunk_denoised" not in timing and 0 < progress < 100 and progress >= math.floor(threshold):
                timing["first_chunk_denoised"] = time.time() - start
            if state.get("status") == "failed":
                error = state.get("error") or {}
                return {"error": (error.get("message") if isinstance(error, dict) else str(error)) or "failed"}
            if state.get("status") == "completed":
                if state.get("peak_memory_mb"):
                    timing["engine_peak_memory_mb"] = state["peak_memory_mb"]
                break
            if time.monotonic() > deadline:
                return {"error": f"job unfinished after {self.args.timeout} s"}
            time.sleep(POLL_S)
        status, content = http.request("GET", f"/v1/videos/{job_id}/content")
        if status != 200:
            return {"error": f"GET content {status}: {content[:300].decode(errors='replace')}"}
        timing["e2e"] = time.time() - start
        timing["progress_steps"] = len(progress_seen)
        mp4.write_bytes(content)
        return timing


# -- report ----------------------------------------------------------------------------------------


def fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row], header: list[str]) -> str:
    lines = header + [
        "",
        "| backend | status | start-up s | 1st request s | E2E s | frames | FPS | TTFC s | peak mem MiB | equals core |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = "-" if r.peak_host_mib is None else f"{r.peak_host_mib:.0f} ({r.mem_kind})"
        if r.peak_gpu_mib is not None:
            mem += f", GPU {r.peak_gpu_mib:.0f}"
        status = r.status if r.status == "ok" else f"**{r.status}**"
        lines.append(f"| {r.backend} | {status} | {fmt(r.startup_s, 1)} | {fmt(r.cold_s)} | {fmt(r.e2e_s)} | {r.frames or '-'} "
                     f"| {fmt(r.fps, 1)} | {fmt(r.ttfc_s)} | {mem} | {r.equal} |")
    lines += ["", "Notes per backend:", ""]
    for r in rows:
        parts = [r.reason] if r.reason else []
        parts += [p for p in (f"TTFC: {r.ttfc_note}" if r.ttfc_note and r.status == "ok" else "",
                              f"equal: {r.equal_note}" if r.equal_note else "") if p]
        parts += r.notes
        lines.append(f"- **{r.backend}**: " + "; ".join(parts or ["-"]))
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path, title: str) -> None:
    """Four bar panels (FPS, E2E, start-up, peak memory), one bar per backend, drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    metrics = [("FPS (higher is better)", "fps", "{:.1f}"), ("end-to-end s", "e2e_s", "{:.2f}"),
               ("start-up s", "startup_s", "{:.1f}"), ("peak memory MiB", "peak_host_mib", "{:.0f}")]
    if any(r.peak_gpu_mib for r in rows):
        metrics[3] = ("peak GPU memory MiB", "peak_gpu_mib", "{:.0f}")
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    panel_w, panel_h, label_w, bar_h, gap = 560, 36 + 34 * len(rows), 130, 22, 12
    width, height = 2 * panel_w + 3 * gap, 44 + 2 * (panel_h + gap)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((gap, 12), title, fill="black", font=font)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for i, (name, attr, form) in enumerate(metrics):
        x0, y0 = gap + (i % 2) * (panel_w + gap), 44 + (i // 2) * (panel_h + gap)
        draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], outline="#cccccc")
        draw.text((x0 + 8, y0 + 6), name, fill="black", font=font)
        values = [getattr(r, attr) if r.status == "ok" else None for r in rows]
        top = max([v for v in values if v] or [1.0])
        span = panel_w - label_w - 70
        for j, (r, v) in enumerate(zip(rows, values)):
            y = y0 + 32 + j * 34
            draw.text((x0 + 8, y + 4), r.backend, fill="black", font=small)
            if v:
                w = max(2, int(span * v / top))
                draw.rectangle([x0 + label_w, y, x0 + label_w + w, y + bar_h], fill=palette[j % len(palette)])
                draw.text((x0 + label_w + w + 6, y + 4), form.format(v), fill="black", font=small)
            else:
                draw.text((x0 + label_w, y + 4), r.status if r.status != "ok" else "n/a", fill="#aa0000", font=small)
    image.save(path)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a Helios folder (default: the built-in tiny Distilled model)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--prompt", default="a red fox running through snow")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--task", choices=["t2v", "i2v", "v2v"])
    parser.add_argument("--image", help="I2V: an image file")
    parser.add_argument("--video", help="V2V: a video file")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-frames", type=int, default=66)
    parser.add_argument("--steps", type=int, nargs="+", help="steps per pyramid stage (Mid, Distilled) or the step count (Base)")
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gamma", type=float, help="run every backend with this pyramid gamma (CPU + diffusers: 0.3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="transformer dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--vae-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="VAE dtype, through each backend's own setting (SGLang vae_precision, vLLM-Omni "
                             "--additional-config helios.vae_dtype, diffusers' VAE dtype)")
    parser.add_argument("--offload", choices=["none", "layer"], default="none",
                        help="layer: blocks streamed from host memory, through each engine's own flag (SGLang "
                             "--dit-layerwise-offload, vLLM-Omni --enable-layerwise-offload); diffusers has no row for it")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests first (the first one is reported as cold)")
    parser.add_argument("--repeats", type=int, default=3, choices=range(1, 101), metavar="N", help="timed requests; the table has their medians")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for a start-up or a request")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--env", action="append", default=[], metavar="NAME=PATH",
                        help="use the folder PATH (bin/python, bin/<engine>) as environment NAME instead of scripts/setup-env NAME")
    args = parser.parse_args(argv)
    pairs = [e.partition("=") for e in args.env]
    if any(not name or not path for name, _, path in pairs):
        parser.error(f"--env takes NAME=PATH, got {args.env}")
    args.env = {name: Path(path) for name, _, path in pairs}
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    out = Path(args.out).resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # SIGTERM (CI, a timeout) unwinds like Ctrl-C, so every server started here is stopped.
    signal.signal(signal.SIGTERM, _terminate)

    from helios_backends.cli import default_model_dir

    folder = Path(args.model).resolve() if args.model else default_model_dir()
    if args.gamma is not None:
        folder = with_gamma(folder, args.gamma, work)
    request, facts = resolve_request(args, folder)
    bench = Bench(args, folder, request, facts, work)
    backends = ["core"] + [b for b in args.backends if b != "core"]
    load_before = os.getloadavg()[0]
    steps = request.get("pyramid_steps") or [request.get("num_inference_steps")]
    title = (f"Helios {facts['variant']} {request['task']} {request['width']}x{request['height']}, {request['num_frames']} frames "
             f"({facts['output_frames']} out, {facts['chunks']} chunks), steps {steps}, seed {request['seed']}, "
             f"{args.device} {args.dtype}, VAE {args.vae_dtype}, offload {args.offload}, gamma {facts['gamma']:.4g}")

    def report(rows: list) -> str:
        """compare.md and compare.json for the rows so far: written after every backend, so a run
        stopped part-way (a device call's time limit) keeps what it measured."""
        header = ["# Backend comparison", "", title, "",
                  f"Model: `{args.model or 'built-in tiny model'}`; host: {platform.node()} ({os.cpu_count()} CPUs); "
                  f"{time.strftime('%Y-%m-%d %H:%M')}; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
                  "(other work on the machine slows every timing).",
                  f"Command: `python bench/compare.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
                  f"Start-up: process start -> ready (/health 200; weights loaded for core/diffusers). 1st request: the first, "
                  f"untimed one ({args.warmup} warm-up). E2E: median of {args.repeats} timed requests, request -> mp4 bytes in hand. "
                  "FPS: frames out / E2E. TTFC: first chunk in the client's hands. Peak memory: the whole process tree over its "
                  "life (PSS counts shared pages once). Equals core: what is compared is in the notes."]
        text = table(rows, header)
        (out / "compare.md").write_text(text)
        (out / "compare.json").write_text(json.dumps({"title": title, "request": request, "facts": facts,
                                                      "rows": [asdict(r) for r in rows]}, indent=2))
        return text

    rows = []
    for backend in backends:
        row = bench.run(backend)
        rows.append(row)
        print(f"   {row.status} {row.reason[:200]}", flush=True)
        report(rows)
    text = report(rows)
    chart(rows, out / "compare.png", title)
    print(text)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}, {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
