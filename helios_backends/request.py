"""A generation request and its validated plan.

`GenerationRequest` is what a user asks for; unset fields (None) take the checkpoint's variant
defaults. It is also the one request schema of every front end: `GenerationRequest.from_fields`
builds one from field values as a server or the CLI receives them, checking each against the
dataclass's own annotations, and `REQUEST_FIELDS` is the list an engine adapter derives its own
option lists from. `plan()` checks every field against the model and returns a `Plan` of concrete
values, raising `RequestError` naming the field, before any model work.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .config import LATENT_STRIDE, MAX_SIZE, PipelineConfig, SamplingDefaults, SchedulerConfig, VARIANT_DEFAULTS, size_multiple  # noqa: F401 (sampler.py imports LATENT_STRIDE from here)
from .errors import RequestError
from .fields import convert, unknown_field
from .media_read import image_field, image_to_tensor, video_field, video_to_tensor
from .parallel import check_sp_degree

Task = Literal["t2v", "i2v", "v2v"]
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_NUM_FRAMES = 100_000  # the longest request; a realtime stream without num_frames runs up to it


@dataclass(frozen=True)
class PromptSegment:
    """Interactive mode: `prompt` takes over from chunk `start_chunk` on."""

    start_chunk: int
    prompt: str


def parse_prompt_schedule(value: Any) -> list[PromptSegment]:
    """A prompt schedule from request JSON: [[start_chunk, prompt], ...] or [{"start_chunk", "prompt"}, ...],
    also JSON-encoded in a string (a form field); PromptSegments are kept."""
    usage = 'a non-empty list of [start_chunk, prompt] pairs or {"start_chunk", "prompt"} objects'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RequestError("prompt_schedule", f"must be {usage} (JSON), got {value[:60]!r}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise RequestError("prompt_schedule", f"must be {usage}, got {value!r}")
    segments = []
    for item in value:
        if isinstance(item, PromptSegment):
            start, prompt = item.start_chunk, item.prompt
        elif isinstance(item, dict) and set(item) == {"start_chunk", "prompt"}:
            start, prompt = item["start_chunk"], item["prompt"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            start, prompt = item
        else:
            raise RequestError("prompt_schedule", f"must be {usage}, got entry {item!r}")
        if isinstance(start, bool) or not isinstance(start, int) or not isinstance(prompt, str):
            raise RequestError("prompt_schedule", f"each entry needs an integer start_chunk and a string prompt, got {item!r}")
        segments.append(PromptSegment(start, prompt))
    return segments


@dataclass
class GenerationRequest:
    prompt: str | list[str] | None = None
    negative_prompt: str | None = None
    task: Task | None = None
    image: Any = None
    video: Any = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    seed: int | None = 0
    num_inference_steps: int | None = None
    pyramid_steps: tuple[int, ...] | None = None
    guidance_scale: float | None = None
    use_zero_init: bool | None = None
    zero_steps: int | None = None
    is_amplify_first_chunk: bool | None = None
    is_skip_first_chunk: bool = False
    keep_first_frame: bool = True
    history_sizes: tuple[int, int, int] = (16, 2, 1)
    num_latent_frames_per_chunk: int = 9
    image_noise_sigma: tuple[float, float] = (0.111, 0.135)
    video_noise_sigma: tuple[float, float] = (0.111, 0.135)
    add_noise_to_image_latents: bool = True
    add_noise_to_video_latents: bool = True
    prompt_schedule: list[PromptSegment] | None = None
    interpolation_steps: int = 3
    max_sequence_length: int | None = None
    timeout_s: float | None = None  # wall-clock budget for the denoising steps; None: no limit

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> GenerationRequest:
        """A request from field values as any front end receives them: JSON values, form strings,
        JSON-encoded lists, `key[]` lists (see fields.form_fields), base64 media.

        Each value is type-checked from this dataclass's annotations (fields.py has the rules),
        the prompt schedule and media are parsed here for every front end, and an unknown key is
        refused by name. Ranges are `plan()`'s to check, against the checkpoint.
        """
        unknown = [name for name in fields if name not in _ANNOTATIONS]
        if unknown:
            raise unknown_field(unknown[0], REQUEST_FIELDS)
        values = {}
        for name, value in fields.items():
            parse = _FIELD_PARSERS.get(name)
            values[name] = parse(value) if parse is not None and value is not None else convert(name, _ANNOTATIONS[name], value)
        return cls(**values)


_ANNOTATIONS: dict[str, Any] = typing.get_type_hints(GenerationRequest)
REQUEST_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationRequest))
# Fields whose values need more than a type check: media is decoded, a schedule parsed.
_FIELD_PARSERS: dict[str, Callable[[Any], Any]] = {
    "prompt_schedule": parse_prompt_schedule,
    "image": image_field,
    "video": video_field,
}


@dataclass(frozen=True)
class Plan:
    """A request with every value concrete and checked."""

    prompts: tuple[str, ...]
    negative_prompt: str
    task: Task
    image: torch.Tensor | None  # (1, 3, H, W) in [-1, 1]
    video: torch.Tensor | None  # (1, 3, T, H, W) in [-1, 1]
    height: int
    width: int
    num_frames: int
    num_chunks: int
    chunk_frames: int  # latent frames per chunk
    steps: tuple[int, ...]  # per stage
    guidance_scale: float
    use_zero_init: bool
    zero_steps: int
    is_amplify_first_chunk: bool
    is_skip_first_chunk: bool
    keep_first_frame: bool
    history_sizes: tuple[int, int, int]
    image_noise_sigma: tuple[float, float]
    video_noise_sigma: tuple[float, float]
    add_noise_to_image_latents: bool
    add_noise_to_video_latents: bool
    prompt_schedule: tuple[PromptSegment, ...] | None
    interpolation_steps: int
    max_sequence_length: int
    seed: int | None = None
    timeout_s: float | None = None

    @property
    def stages(self) -> int:
        """Pyramid stages per chunk (1 for Base)."""
        return len(self.steps)

    @property
    def batch_size(self) -> int:
        return 1 if self.prompt_schedule else len(self.prompts)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def video_frames_per_chunk(self) -> int:
        return (self.chunk_frames - 1) * 4 + 1

    @property
    def output_frames(self) -> int:
        """Frames in the decoded video: all chunks, trimmed to 4k+1 as the VAE's time axis allows."""
        total = self.num_chunks * self.video_frames_per_chunk
        return (total - 1) // 4 * 4 + 1

    def chunk_steps(self, chunk: int, kind: str) -> tuple[int, ...]:
        """Steps per stage in a chunk: DMD's amplified first chunk takes twice as many."""
        if kind == "dmd" and self.is_amplify_first_chunk and chunk == 0:
            return tuple(2 * s for s in self.steps)
        return self.steps

    def total_steps(self, kind: str) -> int:
        return sum(sum(self.chunk_steps(k, kind)) for k in range(self.num_chunks))


def _check_range(name: str, value, low=None, high=None, kind=(int,)):
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(name, f"must be {'an integer' if kind == (int,) else 'a number'}, got {value!r}")
    if low is not None and value < low:
        raise RequestError(name, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise RequestError(name, f"must be <= {high}, got {value}")


def _sigma_range(name: str, value) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RequestError(name, f"must be two numbers (min, max), got {value!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise RequestError(name, f"needs 0 <= min <= max <= 1, got ({lo}, {hi})")
    return lo, hi


def plan(
    request: GenerationRequest,
    pipeline: PipelineConfig,
    scheduler: SchedulerConfig,
    patch_size: tuple[int, int, int] = (1, 2, 2),
    sp_degree: int = 1,
) -> Plan:
    """Validate a request against the checkpoint and fill its unset fields with the variant's defaults.

    sp_degree: the Ulysses x Ring degree the request will run under; sizes whose tokens it cannot
    split evenly are refused here, before queueing (1: no sequence parallelism, no check).
    """
    d: SamplingDefaults = VARIANT_DEFAULTS[pipeline.variant]
    pick = lambda value, default: default if value is None else value  # noqa: E731

    schedule = request.prompt_schedule
    if schedule:
        segments = tuple(s if isinstance(s, PromptSegment) else PromptSegment(*s) for s in schedule)
        starts = [s.start_chunk for s in segments]
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise RequestError("prompt_schedule", f"start chunks must begin at 0 and increase, got {starts}")
        if any(not isinstance(s.prompt, str) or not s.prompt for s in segments):
            raise RequestError("prompt_schedule", "every entry needs a non-empty prompt")
        prompts = tuple(s.prompt for s in segments)
    else:
        segments = None
        prompt = request.prompt
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt or ())
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise RequestError("prompt", "must be a string or a non-empty list of strings")

    height, width = pick(request.height, d.height), pick(request.width, d.width)
    stages = scheduler.stages if pipeline.is_pyramid else 1
    multiple = size_multiple(patch_size, stages)
    for name, value in (("height", height), ("width", width)):
        _check_range(name, value, low=multiple, high=MAX_SIZE)
        if value % multiple:
            raise RequestError(name, f"must be a multiple of {multiple} for {stages} pyramid stage(s), got {value}")

    num_frames = pick(request.num_frames, d.num_frames)
    _check_range("num_frames", num_frames, low=1, high=MAX_NUM_FRAMES)
    chunk_frames = request.num_latent_frames_per_chunk
    _check_range("num_latent_frames_per_chunk", chunk_frames, low=1, high=64)
    window = (chunk_frames - 1) * 4 + 1
    num_chunks = max(1, (num_frames + window - 1) // window)

    if pipeline.is_pyramid:
        if request.num_inference_steps is not None and request.pyramid_steps is None:
            steps = (request.num_inference_steps,) * stages
        else:
            steps = tuple(pick(request.pyramid_steps, d.pyramid_steps))
        if len(steps) != stages:
            raise RequestError("pyramid_steps", f"needs {stages} values (one per scheduler stage), got {len(steps)}")
    else:
        if request.pyramid_steps is not None:
            raise RequestError("pyramid_steps", "only applies to pyramid (Mid/Distilled) checkpoints; use num_inference_steps")
        steps = (pick(request.num_inference_steps, d.num_inference_steps),)
    for s in steps:
        _check_range("pyramid_steps" if pipeline.is_pyramid else "num_inference_steps", s, low=1, high=1000)

    guidance = pick(request.guidance_scale, d.guidance_scale)
    _check_range("guidance_scale", guidance, low=0.0, high=100.0, kind=(int, float))
    zero_steps = pick(request.zero_steps, d.zero_steps)
    _check_range("zero_steps", zero_steps, low=0, high=1000)
    _check_range("interpolation_steps", request.interpolation_steps, low=1, high=1000)
    max_len = pick(request.max_sequence_length, d.max_sequence_length)
    _check_range("max_sequence_length", max_len, low=1, high=4096)

    sizes = tuple(sorted(request.history_sizes, reverse=True))
    if len(sizes) != 3:
        raise RequestError("history_sizes", f"needs 3 values (long, mid, short), got {list(request.history_sizes)}")
    for s in sizes:
        _check_range("history_sizes", s, low=1, high=256)

    task = request.task or ("v2v" if request.video is not None else "i2v" if request.image is not None else "t2v")
    if task not in ("t2v", "i2v", "v2v"):
        raise RequestError("task", f"must be t2v, i2v or v2v, got {task!r}")
    if request.image is not None and request.video is not None:
        raise RequestError("image", "give an image (i2v) or a video (v2v), not both")
    image = video = None
    if task == "i2v":
        if request.image is None:
            raise RequestError("image", "task i2v needs an image")
        image = image_to_tensor(request.image, height, width)
    elif task == "v2v":
        if request.video is None:
            raise RequestError("video", "task v2v needs a video")
        video = video_to_tensor(request.video, height, width)
        if video.shape[2] < window:
            raise RequestError("video", f"needs at least {window} frames (one chunk), got {video.shape[2]}")
    elif request.image is not None or request.video is not None:
        raise RequestError("task", "t2v takes no image or video; use i2v or v2v")
    if task != "t2v" and len(prompts) > 1 and not segments:
        raise RequestError("prompt", f"{task} takes one prompt, got {len(prompts)}")

    seed = request.seed
    if seed is not None:
        _check_range("seed", seed, low=0, high=2**63 - 1)
    timeout = request.timeout_s
    if timeout is not None:
        _check_range("timeout_s", timeout, kind=(int, float))
        if not 0 < timeout <= MAX_TIMEOUT_S:  # also refuses NaN
            raise RequestError("timeout_s", f"must be > 0 and <= {MAX_TIMEOUT_S:g} seconds, got {timeout}")

    result = Plan(
        prompts=prompts,
        negative_prompt=pick(request.negative_prompt, d.negative_prompt),
        task=task,
        image=image,
        video=video,
        height=height,
        width=width,
        num_frames=num_frames,
        num_chunks=num_chunks,
        chunk_frames=chunk_frames,
        steps=steps,
        guidance_scale=float(guidance),
        use_zero_init=bool(pick(request.use_zero_init, d.use_zero_init)),
        zero_steps=zero_steps,
        is_amplify_first_chunk=bool(pick(request.is_amplify_first_chunk, d.is_amplify_first_chunk)),
        is_skip_first_chunk=bool(request.is_skip_first_chunk),
        keep_first_frame=bool(request.keep_first_frame),
        history_sizes=sizes,
        image_noise_sigma=_sigma_range("image_noise_sigma", request.image_noise_sigma),
        video_noise_sigma=_sigma_range("video_noise_sigma", request.video_noise_sigma),
        add_noise_to_image_latents=bool(request.add_noise_to_image_latents),
        add_noise_to_video_latents=bool(request.add_noise_to_video_latents),
        prompt_schedule=segments,
        interpolation_steps=request.interpolation_steps,
        max_sequence_length=max_len,
        seed=seed,
        timeout_s=None if timeout is None else float(timeout),
    )
    check_sp_degree(result, patch_size, sp_degree)
    return result
