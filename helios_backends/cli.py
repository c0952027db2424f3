"""`helios`: generate videos with the core from a terminal.

    helios generate --prompt "a fox in snow" --output fox.mp4      # built-in tiny model
    helios generate --model /models/Helios-Distilled --device cuda --dtype bfloat16 ...
    helios make-tiny DIR [--variant base|mid|distilled]

Every option is checked against the checkpoint's configs before any weights load; an error is
one line naming the option and what it accepts.
"""

from __future__ import annotations

import argparse
import csv
import os
import queue
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, RequestError

OPTION_NAMES = {
    "num_inference_steps": "--steps",
    "size": "--height/--width",
    "parallel": "--ulysses-degree x --ring-degree x --cfg-parallel (under torchrun)",
}
TINY_VERSION = "v1"


class CliError(Exception):
    pass


def option(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def request_error(exc: RequestError) -> CliError:
    """A core RequestError, reworded with the command-line option it came from."""
    return CliError(f"{option(exc.field)}: {str(exc).split(': ', 1)[1]}")


def default_model_dir() -> Path:
    """The built-in tiny Distilled model, created once in the cache folder."""
    from .tiny import make_tiny

    cache = Path(os.environ.get("HELIOS_CACHE", Path.home() / ".cache" / "helios-backends"))
    folder = cache / f"tiny-distilled-{TINY_VERSION}"
    if not (folder / "model_index.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tiny-"))
        make_tiny(tmp, "distilled")
        try:
            tmp.rename(folder)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_prompt_schedule(path: str):
    """CSV with a header `start_chunk,prompt`: each prompt takes over at its chunk."""
    from .request import PromptSegment

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise CliError(f"--prompt-schedule: cannot read {path}: {exc.strerror}") from None
    if not rows or set(rows[0]) != {"start_chunk", "prompt"}:
        raise CliError("--prompt-schedule: needs a CSV header 'start_chunk,prompt' and at least one row")
    try:
        return [PromptSegment(int(r["start_chunk"]), r["prompt"]) for r in rows]
    except (TypeError, ValueError):
        raise CliError("--prompt-schedule: start_chunk must be an integer on every row") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios", description="Helios real-time video diffusion")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("make-tiny", help="write a tiny random-weight Helios folder (released layout)")
    tiny.add_argument("folder")
    tiny.add_argument("--variant", choices=["base", "mid", "distilled"], default="distilled")

    g = sub.add_parser("generate", help="generate a video")
    g.add_argument("--model", help="a Helios folder (default: the built-in tiny model)")
    g.add_argument("--prompt")
    g.add_argument("--negative-prompt")
    g.add_argument("--task", choices=["t2v", "i2v", "v2v"])
    g.add_argument("--image", help="input image file (i2v)")
    g.add_argument("--video", help="input video file (v2v)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--num-frames", type=int)
    g.add_argument("--fps", type=int, default=24)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, help="denoising steps (single-stage Base)")
    g.add_argument("--pyramid-steps", type=int, nargs="+", metavar="N", help="steps per pyramid stage (Mid/Distilled)")
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--zero-steps", type=int)
    g.add_argument("--no-zero-init", action="store_true", help="turn CFG-Zero* zero-init off")
    g.add_argument("--amplify-first-chunk", action="store_true", default=None)
    g.add_argument("--skip-first-chunk", action="store_true")
    g.add_argument("--image-noise-sigma", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.111, 0.135))
    g.add_argument("--video-noise-sigma", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.111, 0.135))
    g.add_argument("--prompt-schedule", help="CSV 'start_chunk,prompt': interactive prompts")
    g.add_argument("--prompts-from", metavar="FILE|-",
                   help="live prompt changes, one line each, taken one per chunk boundary in order ('-': stdin, read as the video streams)")
    g.add_argument("--interpolation-steps", type=int, default=3, help="chunks over which a scheduled prompt blends in")
    g.add_argument("--max-sequence-length", type=int)
    g.add_argument("--device", default="cpu", help="cpu, cuda[:N] or npu[:N] (under torchrun: cuda means cuda:LOCAL_RANK)")
    g.add_argument("--offload", choices=["none", "model", "layer"], default="none",
                   help="model: text encoder on the host, streamed through the GPU per prompt; layer: also stream transformer blocks from host memory")
    g.add_argument("--offload-slots", type=int, default=2, help="device copies the streamed blocks rotate through with --offload layer")
    g.add_argument("--offload-resident-blocks", type=int, default=0, metavar="N",
                   help="with --offload layer: the first N transformer blocks stay on the GPU and only the rest stream "
                        "(more device memory, fewer bytes copied per step: a 12 or 16 GB card's profile)")
    g.add_argument("--vae-frames-per-call", type=int, default=1,
                   help="latent frames per pass of the VAE decoder's upsampled layers; 0: a whole chunk (~8.5 GiB more at 384x640 bf16)")
    g.add_argument("--ulysses-degree", type=int, default=1, help="Ulysses sequence parallelism (run under torchrun)")
    g.add_argument("--ring-degree", type=int, default=1, help="Ring attention sequence parallelism (run under torchrun)")
    g.add_argument("--cfg-parallel", action="store_true", help="conditional/unconditional branches on two ranks (run under torchrun)")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="merge a LoRA adapter (safetensors file or folder) at SCALE (default 1); repeatable")
    g.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="the transformer's and text encoder's dtype (default: bfloat16 on a GPU or NPU, float32 on the CPU)")
    g.add_argument("--quantization", choices=["fp8"],
                   help="fp8: the transformer blocks' linear layers on FP8 tensor cores (a GPU with compute capability 8.9+, --dtype bfloat16)")
    g.add_argument("--vae-dtype", choices=["float32", "bfloat16"],
                   help="the VAE decoder's precision (default: bfloat16 with --offload layer, float32 otherwise); bfloat16 is "
                        "faster and lighter, its frames differ slightly (README)")
    g.add_argument("--output", default="output.mp4")
    g.add_argument("--output-latents", help="also save every latent frame to this .safetensors file")
    return parser


def _request(args):
    from .media_read import read_image, read_video
    from .request import GenerationRequest

    image = video = None
    try:
        image = read_image(args.image) if args.image else None
    except ValueError as exc:
        raise CliError(f"--image: {exc}") from None
    try:
        video = read_video(args.video) if args.video else None
    except ValueError as exc:
        raise CliError(f"--video: {exc}") from None
    schedule = read_prompt_schedule(args.prompt_schedule) if args.prompt_schedule else None
    if schedule is None and not args.prompt:
        raise CliError("--prompt: a prompt is required (or --prompt-schedule)")
    fields = {
        "prompt": None if schedule else args.prompt,
        "negative_prompt": args.negative_prompt,
        "task": args.task,
        "image": image,
        "video": video,
        "height": args.height,
        "width": args.width,
        "num_frames": args.num_frames,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "pyramid_steps": args.pyramid_steps,
        "guidance_scale": args.guidance_scale,
        "use_zero_init": False if args.no_zero_init else None,
        "zero_steps": args.zero_steps,
        "is_amplify_first_chunk": args.amplify_first_chunk,
        "is_skip_first_chunk": args.skip_first_chunk,
        "image_noise_sigma": args.image_noise_sigma,
        "video_noise_sigma": args.video_noise_sigma,
        "prompt_schedule": schedule,
        "interpolation_steps": args.interpolation_steps,
        "max_sequence_length": args.max_sequence_length,
    }
    try:
        return GenerationRequest.from_fields(fields)
    except RequestError as exc:
        raise request_error(exc) from None


def default_dtype(device) -> str:
    """What the released weights are and what users of an accelerator run: bfloat16 there; the
    CPU keeps float32 (its bfloat16 matmuls are slow and its tests compare in float32)."""
    return "float32" if device.type == "cpu" else "bfloat16"


def default_vae_dtype(offload: str) -> str:
    """float32, the loaders' default, except under layer offload: the fp32 decode's activations
    alone would take an 8 GB card past its memory (bench/RESULTS.md, the eighth session)."""
    return "bfloat16" if offload == "layer" else "float32"


def generate(args) -> None:
    from .fp8 import check_quantization
    from .loading import plan_for_folder, read_configs, resolve_device, resolve_dtype

    if args.fps < 1 or args.fps > 240:
        raise CliError(f"--fps: must be between 1 and 240, got {args.fps}")
    folder = Path(args.model) if args.model else default_model_dir()
    try:
        configs = read_configs(folder)
    except CheckpointError as exc:
        raise CliError(f"--model: {exc}") from None
    from .parallel import ParallelConfig

    parallel = ParallelConfig(args.ulysses_degree, args.ring_degree, args.cfg_parallel)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        parallel.validate(configs.transformer.num_attention_heads, world)
    except RequestError as exc:
        raise request_error(exc) from None
    device_name = args.device
    if world > 1 and device_name == "cuda":
        device_name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        device = resolve_device(device_name)
    except CheckpointError as exc:
        raise CliError(f"--device: {exc}") from None
    try:
        p = plan_for_folder(folder, _request(args), parallel.sp_degree)
    except RequestError as exc:
        raise request_error(exc) from None
    out = Path(args.output)
    if not out.parent.is_dir():
        raise CliError(f"--output: folder {out.parent} does not exist")
    if args.vae_frames_per_call < 0:
        raise CliError(f"--vae-frames-per-call: must be >= 0 (0: a whole chunk per pass), got {args.vae_frames_per_call}")
    dtype = resolve_dtype(args.dtype or default_dtype(device))
    try:
        check_quantization(args.quantization, device, dtype)
    except CheckpointError as exc:
        raise CliError(f"--quantization: {exc}") from None
    if args.quantization and args.lora:
        raise CliError("--lora: adapters merge into dense weights, which --quantization fp8 replaces; use one or the other")
    layers = configs.transformer.num_layers
    if not 1 <= args.offload_slots <= layers:
        raise CliError(f"--offload-slots: must be between 1 and {layers} (the model's blocks), got {args.offload_slots}")
    if args.offload_resident_blocks and args.offload != "layer":
        raise CliError(f"--offload-resident-blocks: only with --offload layer (got --offload {args.offload})")
    if not 0 <= args.offload_resident_blocks <= layers - args.offload_slots:
        raise CliError(f"--offload-resident-blocks: must be between 0 and {layers - args.offload_slots} (the model's {layers} blocks "
                       f"less --offload-slots {args.offload_slots}), got {args.offload_resident_blocks}")
    memory = Memory(offload=args.offload, offload_slots=args.offload_slots, offload_resident=args.offload_resident_blocks,
                    vae_frames_per_call=args.vae_frames_per_call or None, loras=lora_specs(args.lora),
                    vae_dtype=args.vae_dtype or default_vae_dtype(args.offload),
                    quantization=args.quantization)
    if args.prompts_from == "-" and parallel.world_size > 1:
        raise CliError("--prompts-from: '-' (stdin) reaches one rank only under torchrun; give a file every rank reads")
    changes = LivePrompts.open(args.prompts_from) if args.prompts_from else None
    if parallel.world_size > 1:
        run_distributed(folder, p, device, dtype, out, args.fps, args.output_latents, parallel, memory, changes)
    else:
        run(folder, p, device, dtype, out, args.fps, args.output_latents, memory=memory, changes=changes)


class LivePrompts:
    """Prompt changes read from a file or stdin, handed out one per chunk boundary in order.

    A file is read whole before the run, so its line i takes over at chunk i + 1 on every rank, the
    same video as a schedule; stdin is read on a thread while the video streams, and each line takes
    the first chunk boundary after it arrives. Blank lines are skipped.
    """

    def __init__(self):
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    @classmethod
    def open(cls, source: str) -> "LivePrompts":
        live = cls()
        if source == "-":
            threading.Thread(target=live._read, args=(sys.stdin,), daemon=True, name="helios-prompts").start()
            return live
        try:
            with open(source) as f:
                live._read(f)
        except OSError as exc:
            raise CliError(f"--prompts-from: cannot read {source}: {exc.strerror}") from None
        return live

    def _read(self, lines) -> None:
        for line in lines:
            if line.strip():
                self._lines.put(line.strip())

    def next(self) -> str | None:
        """The next change, or None when none has arrived."""
        try:
            return self._lines.get_nowait()
        except queue.Empty:
            return None


def lora_specs(values: list[str]) -> tuple[tuple[str, float], ...]:
    """`--lora PATH[:SCALE]` values as (path, scale); paths checked before any weights load."""
    from .lora import parse_lora_spec

    specs = []
    for value in values:
        try:
            path, scale = parse_lora_spec(value)
        except ValueError as exc:
            raise CliError(f"--lora: {exc}") from None
        if not Path(path).exists():
            raise CliError(f"--lora: {path}: no such file or folder")
        specs.append((path, scale))
    return tuple(specs)


@dataclass(frozen=True)
class Memory:
    """How a run trades speed for device memory and precision (see Helios.from_pretrained), and the LoRAs merged into the weights."""

    offload: str = "none"
    offload_slots: int = 2
    offload_resident: int = 0
    vae_frames_per_call: int | None = 1
    loras: tuple[tuple[str, float], ...] = ()
    vae_dtype: str = "float32"
    quantization: str | None = None


def run_distributed(folder, p, device, dtype, out, fps, latents_path, parallel, memory: Memory, changes=None) -> None:
    """Under torchrun: every rank denoises its share; rank 0 decodes and writes the files."""
    import torch.distributed as dist

    from .parallel import ParallelGroups

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    try:
        groups = ParallelGroups.from_world(parallel)
        run(folder, p, device, dtype, out, fps, latents_path, groups, writer=dist.get_rank() == 0, memory=memory,
            changes=changes)
    finally:
        dist.destroy_process_group()


def run(
    folder: Path, p, device, dtype, out: Path, fps: int, latents_path: str | None, groups=None, writer: bool = True,
    memory: Memory = Memory(), changes: LivePrompts | None = None,
) -> None:
    import contextlib

    from safetensors.torch import save_file
    from tqdm import tqdm

    from .pipeline import Helios
    from .media_write import Mp4Writer

    helios = Helios.from_pretrained(folder, device=device, dtype=dtype, vae_dtype=memory.vae_dtype, parallel=groups,
                                    offload=memory.offload, offload_slots=memory.offload_slots,
                                    offload_resident=memory.offload_resident,
                                    vae_frames_per_call=memory.vae_frames_per_call, quantization=memory.quantization)
    try:
        helios.set_loras(memory.loras)
    except CheckpointError as exc:
        raise CliError(f"--lora: {exc}") from None
    try:
        session = helios.session(p, decode=writer, keep="latents" if writer and latents_path else None)
    except RequestError as exc:
        raise request_error(exc) from None
    bar = tqdm(total=session.total_steps, unit="step", disable=not (writer and sys.stderr.isatty()), file=sys.stderr)

    def progress(s) -> None:
        bar.set_description(f"chunk {s.chunk + 1}/{p.num_chunks}", refresh=False)
        bar.update()
        if changes is not None and s.generation.chunk_denoised:  # a chunk boundary: the next chunk takes it
            prompt = changes.next()
            if prompt is not None:
                s.change_prompt(prompt)

    mp4 = Mp4Writer(out, p.width, p.height, fps) if writer else contextlib.nullcontext()
    with mp4, session:
        try:
            for chunk in session.chunks(on_step=progress):
                if writer:
                    mp4.write(chunk.frames[0])
        except RequestError as exc:
            raise request_error(exc) from None
    bar.close()
    if writer:
        if latents_path:
            save_file({"latents": session.latents().contiguous()}, latents_path)
        print(f"wrote {out} ({mp4.frames_written} frames, {p.width}x{p.height} at {fps} fps)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "make-tiny":
            from .tiny import make_tiny

            print(f"wrote {make_tiny(args.folder, args.variant)}")
        else:
            generate(args)
    except CliError as exc:
        print(f"helios: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
