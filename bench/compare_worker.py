"""The parts of `bench/compare.py` that must run inside a backend's own environment.

    python compare_worker.py run core|diffusers SPEC.json OUT_DIR   # one backend in this process
    python compare_worker.py served-reference vllm|vllm-stream|sglang SPEC.json OUT_DIR
    python compare_worker.py stream WS_URL START.json SESSIONS OUT.mp4         # vLLM-Omni streaming
    python compare_worker.py plugins vllm|sglang                    # entry points, as JSON

`run` is started as a fresh process per backend so that its start-up (interpreter, imports,
weights) is timed the way an engine server's is and its memory is its own; it writes
time.time() stamps (ready; per timed run start, first chunk, done) to OUT_DIR/result.json, the frames
to frames.npy and the video to video.mp4 (our `Mp4Writer`, so encoding is counted for both).

`served-reference` runs the core in an engine's env and passes its frames through that engine's
own mp4 writer: a served video is compared with the core's frames as that engine would have
served them, since H.264 changes noise-like frames by far more than any numerical difference.

`plugins` lists the entry points of the engine's plugin groups, from which compare.py builds the
engine's own plugin filter (VLLM_PLUGINS / SGLANG_PLUGINS) for the native backends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.timing import sync  # noqa: E402
from helios_harness.realtime import realtime_session  # noqa: E402


def _inputs(spec: dict) -> dict:
    """The conditioning image/video of a spec, read the way the core's CLI reads them."""
    from helios_backends.media_read import read_image, read_video

    out = {}
    if spec.get("image"):
        out["image"] = read_image(spec["image"])
    if spec.get("video"):
        out["video"] = read_video(spec["video"])
    return out


def load_core(spec: dict):
    from helios_backends.pipeline import Helios
    from helios_backends.request import GenerationRequest

    helios = Helios.from_pretrained(spec["model"], device=spec["device"], dtype=spec["dtype"],
                                    vae_dtype=spec.get("vae_dtype", "float32"), offload=spec.get("offload", "none"))
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec["request"].items()}
    return helios, GenerationRequest(**fields, **_inputs(spec))


def run_core(spec: dict, out: Path, result: dict) -> None:
    import numpy as np
    import torch

    from helios_backends.media_write import Mp4Writer

    helios, request = load_core(spec)
    result["ready"] = time.time()
    for _ in range(spec["warmup"]):
        t = time.time()
        for _ in helios.stream(request):
            pass
        result["warmup_s"].append(time.time() - t)
    for _ in range(spec["repeats"]):
        frames, run = [], {"start": time.time(), "first_chunk": None}
        with Mp4Writer(out / "video.mp4", request.width, request.height, spec["fps"]) as writer:
            for chunk in helios.stream(request):
                if run["first_chunk"] is None:
                    run["first_chunk"] = time.time()
                writer.write(chunk.frames[0])
                frames.append(chunk.frames[0])
        run["done"] = time.time()
        result["runs"].append(run)
    result["first_chunk_how"] = "first chunk's frames handed out by Helios.stream"
    video = torch.cat(frames).numpy()
    result["frames"] = len(video)
    np.save(out / "frames.npy", video)


def diffusers_kwargs(spec: dict) -> dict:
    """The request in diffusers' argument names, every Helios option explicit (no pipeline defaults)."""
    r = spec["request"]
    kw = dict(prompt=r["prompt"], negative_prompt=r["negative_prompt"], height=r["height"], width=r["width"],
              num_frames=r["num_frames"], guidance_scale=r["guidance_scale"], max_sequence_length=r["max_sequence_length"])
    if r.get("pyramid_steps"):
        kw.update(pyramid_num_inference_steps_list=list(r["pyramid_steps"]), is_amplify_first_chunk=r["is_amplify_first_chunk"],
                  use_zero_init=r["use_zero_init"], zero_steps=r["zero_steps"])
    else:
        kw.update(num_inference_steps=r["num_inference_steps"])
    return kw


def run_diffusers(spec: dict, out: Path, result: dict) -> None:
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from helios_backends.media_write import Mp4Writer

    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    # The VAE in the spec's dtype (the core's default fp32, at any transformer dtype), as the core's.
    vae_dtype = getattr(torch, spec.get("vae_dtype", "float32"))
    torch_dtype = {"transformer": dtype, "text_encoder": dtype, "default": vae_dtype}
    pipe = DiffusionPipeline.from_pretrained(spec["model"], torch_dtype=torch_dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    result["ready"] = time.time()
    kw = diffusers_kwargs(spec)
    inputs = _inputs(spec)
    if "image" in inputs:
        kw["image"] = inputs["image"]
    if "video" in inputs:
        kw["video"] = [Image.fromarray(f) for f in inputs["video"]]
    decode = pipe.vae.decode
    decoded: list[float] = []

    def timed_decode(*args, **kwargs):
        value = decode(*args, **kwargs)
        sync(device)
        decoded.append(time.time())
        return value

    def call():
        with torch.no_grad():
            return pipe(generator=torch.Generator(device=device).manual_seed(spec["request"]["seed"]), output_type="np", **kw).frames

    for _ in range(spec["warmup"]):
        t = time.time()
        call()
        result["warmup_s"].append(time.time() - t)
    pipe.vae.decode = timed_decode
    for _ in range(spec["repeats"]):
        decoded.clear()
        sync(device)
        run = {"start": time.time(), "first_chunk": None}
        video = call()[0]
        frames = np.round(np.clip(video, 0, 1) * 255).astype(np.uint8)  # as the core's to_uint8_frames rounds
        with Mp4Writer(out / "video.mp4", kw["width"], kw["height"], spec["fps"]) as writer:
            writer.write(frames)
        run["done"] = time.time()
        run["first_chunk_internal"] = decoded[0] if decoded else None
        result["runs"].append(run)
    result["first_chunk_how"] = "n/a: the pipeline returns the whole video at the end"
    result["frames"] = len(frames)
    np.save(out / "frames.npy", frames)


def encode_as(engine: str, frames, fps: int, path: Path) -> None:
    """Write frames to `path` with `engine`'s own server-side mp4 writer (vllm-stream: a list of chunks)."""
    if engine == "vllm":
        from vllm_omni.entrypoints.openai.serving_video import _VIDEO_RESPONSE_FRAME_CONVERSION_WORKERS
        from vllm_omni.entrypoints.openai.video_api_utils import _encode_video_bytes, _PlanarFrameConverter

        # What vLLM-Omni's /v1/videos does for an mp4: its codec options and its planar frame converter.
        converter = _PlanarFrameConverter(max_workers=_VIDEO_RESPONSE_FRAME_CONVERSION_WORKERS)
        try:
            path.write_bytes(_encode_video_bytes(frames, fps=fps, video_codec_options={"preset": "ultrafast", "threads": "0"},
                                                 frame_converter=converter))
        finally:
            converter.shutdown()
    elif engine == "vllm-stream":
        from vllm_omni.entrypoints.openai.video_api_utils import create_streaming_video_encoder

        # What vLLM-Omni's /v1/realtime/video does: one fMP4 fragment per chunk, its codec options.
        encoder = create_streaming_video_encoder(output_format="m4s", fps=fps,
                                                 video_codec_options={"preset": "ultrafast", "threads": "0", "tune": "zerolatency"})
        data = b"".join(encoder.encode(chunk) or b"" for chunk in frames)
        path.write_bytes(data + (encoder.close() or b""))
    elif engine == "sglang":
        from sglang.multimodal_gen.configs.sample.sampling_params import DataType
        from sglang.multimodal_gen.runtime.entrypoints.utils import post_process_sample

        # SGLang's server writer at its default quality (tests/sglang found the same frames).
        post_process_sample(frames, DataType.VIDEO, fps, True, str(path), output_compression=50)
    else:
        raise SystemExit(f"unknown engine {engine!r}")


def cmd_served_reference(engine: str, spec_path: str, out_dir: str) -> int:
    """The core's frames computed in this (the engine's) env, raw and through the engine's mp4 writer.

    In the engine's own env because the engines' torch builds differ from the core env's (vLLM's
    is torch's CUDA build): their CPU kernels can round a few pixels differently, which H.264
    then spreads over whole blocks.
    """
    import numpy as np
    import torch

    from helios_backends.media_read import decode_mp4

    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    helios, request = load_core(spec)
    chunks = [chunk.frames[0].numpy() for chunk in helios.stream(request)]
    frames = np.concatenate(chunks)
    np.save(out / "raw.npy", frames)
    encode_as(engine, chunks if engine == "vllm-stream" else frames, spec["fps"], out / "served.mp4")
    np.save(out / "served.npy", decode_mp4(out / "served.mp4"))
    return 0


def cmd_run(backend: str, spec_path: str, out_dir: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"backend": backend, "process_start": time.time(), "warmup_s": [], "runs": []}
    try:
        {"core": run_core, "diffusers": run_diffusers}[backend](spec, out, result)
        import torch

        if torch.cuda.is_available() and spec["device"].startswith("cuda"):
            # torch's own figure, for when nvidia-smi cannot see this process (containers)
            result["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        code = 0
    except Exception as exc:  # reported in the backend's row
        result["error"] = f"{type(exc).__name__}: {exc}".strip()
        result["traceback"] = traceback.format_exc()
        code = 1
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return code


def cmd_stream(url: str, start_path: str, sessions: str, out_path: str) -> int:
    """Streaming sessions over vLLM-Omni's websocket, one after another; prints their timings as JSON.

    Each is timed from just before connecting: first media chunk's bytes, and session.done. The
    last session's bytes (one fMP4) are written to out_path.
    """
    start = json.loads(Path(start_path).read_text())
    timings = []
    for _ in range(int(sessions)):
        began = time.time()
        chunks, data, (ended, end) = asyncio.run(realtime_session(url, start))
        timings.append({"start": began, "first_chunk": chunks[0][0] if chunks else None, "chunks": len(chunks)})
        if end["type"] == "error":
            timings[-1]["error"] = end.get("message", "error")
            break
        timings[-1]["done"] = ended
    Path(out_path).write_bytes(data)
    print(json.dumps(timings))
    return 0


PLUGIN_GROUPS = {
    "vllm": ("vllm.general_plugins", "vllm.platform_plugins", "vllm_omni.general_plugins", "vllm_omni.platform_plugins"),
    "sglang": ("sglang.multimodal_gen.plugins",),
}


def cmd_plugins(engine: str) -> int:
    from importlib.metadata import entry_points

    print(json.dumps({g: {e.name: e.value for e in entry_points(group=g)} for g in PLUGIN_GROUPS[engine]}))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "run":
        return cmd_run(*argv[1:4])
    if len(argv) == 4 and argv[0] == "served-reference":
        return cmd_served_reference(*argv[1:4])
    if len(argv) == 5 and argv[0] == "stream":
        return cmd_stream(*argv[1:5])
    if len(argv) == 2 and argv[0] == "plugins":
        return cmd_plugins(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
