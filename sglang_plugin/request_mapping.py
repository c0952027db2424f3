"""SGLang sampling parameters -> the core's `GenerationRequest`.

SGLang's shared fields (height, steps, guidance ...) always carry a value, but only the ones the
user set are handed to the core (SGLang records them as `explicit_fields`): unset ones stay None
so the core applies the checkpoint's own variant defaults (Base, Mid and Distilled differ), read
from the folder itself rather than from a name SGLang matched.
"""

from __future__ import annotations

from typing import Any

from helios_backends.errors import RequestError
from helios_backends.media import decode_image, decode_video
from helios_backends.request import GenerationRequest, parse_prompt_schedule

from .front_door import engine_media

# SGLang field -> GenerationRequest field, passed on only when the user set it (SGLang's own
# warm-up, which sets no field explicitly, hands on its sizes and step count: WARMUP_FIELDS).
SHARED_FIELDS = {
    "negative_prompt": "negative_prompt",
    "height": "height",
    "width": "width",
    "num_frames": "num_frames",
    "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "max_sequence_length": "max_sequence_length",
}

WARMUP_FIELDS = frozenset({"height", "width", "num_frames", "num_inference_steps"})

# Helios-only sampling fields (None = the core's default); also the HTTP extra fields.
HELIOS_FIELDS = (
    "task",
    "image",
    "video",
    "pyramid_steps",
    "use_zero_init",
    "zero_steps",
    "is_amplify_first_chunk",
    "is_skip_first_chunk",
    "keep_first_frame",
    "history_sizes",
    "num_latent_frames_per_chunk",
    "image_noise_sigma",
    "video_noise_sigma",
    "add_noise_to_image_latents",
    "add_noise_to_video_latents",
    "prompt_schedule",
    "interpolation_steps",
    "timeout_s",
)


def _prompt(value) -> str | list[str]:
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def _seed(value) -> int:
    if isinstance(value, list):
        if len(value) != 1:
            raise RequestError("seed", f"Helios takes one seed per request, got {len(value)}")
        value = value[0]
    return value


def _tuple(field: str, value, kind: type):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
        raise RequestError(field, f"must be a list of {'integers' if kind is int else 'numbers'}, got {value!r}")
    return tuple(value)


def to_generation_request(params: Any, explicit_fields: set[str] | None) -> GenerationRequest:
    """Map one SGLang SamplingParams onto a core request.

    explicit_fields None means the request did not come from a user (SGLang's own warm-up),
    whose concrete sizes and step count are then taken as they are.
    """
    if (getattr(params, "num_outputs_per_prompt", 1) or 1) != 1:
        raise RequestError("num_outputs_per_prompt", f"Helios makes one video per prompt (accepted: 1), got {params.num_outputs_per_prompt}")
    values: dict[str, Any] = {"prompt": _prompt(params.prompt), "seed": _seed(params.seed)}
    for ours, theirs in SHARED_FIELDS.items():
        if ours in (WARMUP_FIELDS if explicit_fields is None else explicit_fields):
            values[theirs] = getattr(params, ours)
    for name in HELIOS_FIELDS:
        value = getattr(params, name, None)
        if value is not None:
            values[name] = value
    for name in ("pyramid_steps", "history_sizes"):
        if name in values:
            values[name] = _tuple(name, values[name], int)
    for name in ("image_noise_sigma", "video_noise_sigma"):
        if name in values:
            values[name] = _tuple(name, values[name], (int, float))
    if "prompt_schedule" in values:
        schedule = values["prompt_schedule"]
        values["prompt_schedule"] = None if schedule is None else parse_prompt_schedule(schedule)
    values.update(engine_media(params))  # an input_reference upload SGLang saved for this request
    if "image" in values:
        values["image"] = decode_image(values["image"])
    if "video" in values:
        values["video"] = decode_video(values["video"])
    return GenerationRequest(**values)


def explicit_fields_of(req: Any) -> set[str] | None:
    fields = req.extra.get("explicit_fields")
    return None if fields is None else set(fields)

