"""vLLM-Omni request -> `GenerationRequest`: the standard sampling fields plus Helios' extra params.

vLLM-Omni carries model-specific options in `sampling_params.extra_args` (the `/v1/videos`
`extra_params` JSON, an offline `OmniDiffusionSamplingParams(extra_args=...)`). Their names are
the core's own `GenerationRequest` fields, so one spelling works in the CLI, Python and every
engine. Values are checked for shape here and for range by the core's `plan()`; both raise
`RequestError` naming the field. Media arrives in memory only: a PIL image or frames from the
server's upload decoding, or base64 bytes in the JSON body; a path is never opened.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from helios_backends import media as core_media
from helios_backends.errors import RequestError
from helios_backends.request import GenerationRequest, parse_prompt_schedule

# Request options taken from extra_args, and the type check each needs before the core's plan().
BOOL_OPTIONS = frozenset(
    {
        "use_zero_init",
        "is_amplify_first_chunk",
        "is_skip_first_chunk",
        "keep_first_frame",
        "add_noise_to_image_latents",
        "add_noise_to_video_latents",
    }
)
INT_OPTIONS = frozenset({"zero_steps", "num_latent_frames_per_chunk", "interpolation_steps"})
# Checked by the core's plan() alone.
CORE_OPTIONS = frozenset({"timeout_s"})
LIST_OPTIONS = {"pyramid_steps": None, "history_sizes": 3, "image_noise_sigma": 2, "video_noise_sigma": 2}
MEDIA_OPTIONS = frozenset({"image", "video"})
ADAPTER_OPTIONS = frozenset({"task", "prompt_schedule", "output_type"})
HELIOS_EXTRA_PARAMS = frozenset(BOOL_OPTIONS | INT_OPTIONS | CORE_OPTIONS | set(LIST_OPTIONS) | MEDIA_OPTIONS | ADAPTER_OPTIONS)

# Keys vLLM-Omni itself writes into extra_args: `duration` from the request's `seconds` (already
# turned into num_frames), `video_codec_options` for its mp4 encoder, the CFG scales of its
# start-up warm-up request. They are not Helios options and are left to the engine.
ENGINE_EXTRA_ARGS = frozenset({"duration", "video_codec_options", "cfg_text_scale", "cfg_img_scale"})

OUTPUT_TYPES = ("frames", "latent")
# For images too: a 4096x4096 PNG can be larger than the core's 16 MiB default.
MAX_MEDIA_BYTES = 64 * 1024 * 1024


def decode_image(value: Any) -> Any:
    """An image option: a PIL image or array as given, or PNG/JPEG/WebP file bytes (base64) decoded by the core."""
    if isinstance(value, (str, bytes)):
        return core_media.decode_image(value, max_bytes=MAX_MEDIA_BYTES)
    return value


def decode_video(value: Any) -> Any:
    """A video option: frames as given, or video-file bytes (base64) decoded by the core."""
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
        raise RequestError("video", "give frames or base64 video bytes; file paths are never opened")
    if isinstance(value, (str, bytes)):
        return core_media.decode_video(value, max_bytes=MAX_MEDIA_BYTES)
    return value


def _checked(name: str, value: Any) -> Any:
    """Type-check one extra param; ranges are the core's to check."""
    if name in BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise RequestError(name, f"must be true or false, got {value!r}")
        return value
    if name in INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(name, f"must be an integer, got {value!r}")
        return value
    if name in LIST_OPTIONS:
        length = LIST_OPTIONS[name]
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            shape = f"a list of {length} numbers" if length else "a list of integers"
            raise RequestError(name, f"must be {shape}, got {value!r}")
        if name == "pyramid_steps" and any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise RequestError(name, f"must be a list of integers, got {value!r}")
        return tuple(value)
    if name == "task":
        if value not in ("t2v", "i2v", "v2v"):
            raise RequestError("task", f"must be t2v, i2v or v2v, got {value!r}")
        return value
    if name == "prompt_schedule":
        return parse_prompt_schedule(value)
    if name == "output_type":
        if value not in OUTPUT_TYPES:
            raise RequestError("output_type", f"must be one of {list(OUTPUT_TYPES)}, got {value!r}")
        return value
    if name in CORE_OPTIONS:
        return value
    if name == "image":
        return decode_image(value)
    return decode_video(value)


def _prompt_fields(prompt: Any) -> tuple[Any, str | None, dict]:
    """(text, negative prompt, multi_modal_data) of a vLLM-Omni prompt (a string or an OmniTextPrompt dict)."""
    if isinstance(prompt, str):
        return prompt, None, {}
    if isinstance(prompt, dict):
        media = prompt.get("multi_modal_data") or {}
        if not isinstance(media, dict):
            raise RequestError("multi_modal_data", f"must be an object, got {type(media).__name__}")
        return prompt.get("prompt"), prompt.get("negative_prompt"), media
    raise RequestError("prompt", f"must be a string or a prompt object, got {type(prompt).__name__}")


def helios_options(sampling) -> dict[str, Any]:
    """The Helios options of a request's extra_args, type-checked; unknown keys are refused by name."""
    extra = sampling.extra_args or {}
    if not isinstance(extra, dict):
        raise RequestError("extra_params", f"must be a JSON object, got {type(extra).__name__}")
    unknown = sorted(set(extra) - HELIOS_EXTRA_PARAMS - ENGINE_EXTRA_ARGS)
    if unknown:
        raise RequestError(f"extra_params.{unknown[0]}", f"is not a Helios option (accepted: {sorted(HELIOS_EXTRA_PARAMS)})")
    return {name: _checked(name, value) for name, value in extra.items() if name in HELIOS_EXTRA_PARAMS}


def to_generation_request(prompt: Any, sampling) -> tuple[GenerationRequest, dict[str, Any]]:
    """The core request for one vLLM-Omni request, and the adapter's own options (output_type)."""
    text, negative, media = _prompt_fields(prompt)
    options = helios_options(sampling)
    adapter = {k: options.pop(k) for k in ("output_type",) if k in options}
    for name in ("image", "video"):
        if name in media:
            if name in options:
                raise RequestError(name, f"give the {name} as an upload or in extra_params, not both")
            options[name] = decode_image(media[name]) if name == "image" else decode_video(media[name])
    unknown_media = sorted(set(media) - {"image", "video"})
    if unknown_media:
        raise RequestError(f"multi_modal_data.{unknown_media[0]}", "Helios takes only an image or a video")
    if isinstance(options.get("image"), list):
        raise RequestError("image", "Helios takes one image, got a list")
    if sampling.num_outputs_per_prompt != 1:
        raise RequestError("num_outputs_per_prompt", f"must be 1 (one video per request), got {sampling.num_outputs_per_prompt}")
    if isinstance(options.get("video"), np.ndarray) and options["video"].ndim == 5:
        raise RequestError("video", "Helios takes one video, got a batch")
    request = GenerationRequest(
        prompt=None if options.get("prompt_schedule") else text,
        negative_prompt=negative,
        height=sampling.height,
        width=sampling.width,
        num_frames=sampling.num_frames,
        seed=sampling.seed,
        num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale if sampling.guidance_scale_provided else None,
        max_sequence_length=sampling.max_sequence_length,
        **options,
    )
    return request, adapter
