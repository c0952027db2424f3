"""vLLM-Omni request -> `GenerationRequest`: the standard sampling fields plus Helios' extra params.

vLLM-Omni carries model-specific options in `sampling_params.extra_args` (the `/v1/videos`
`extra_params` JSON, an offline `OmniDiffusionSamplingParams(extra_args=...)`). Their names are
the core's own `GenerationRequest` fields, so one spelling works in the CLI, Python and every
engine, and they are type-checked, decoded and refused by the core's
`GenerationRequest.from_fields`: the same errors as every other front end. Ranges are checked by
the core's `plan()`. Media arrives in memory only: a PIL image or frames from the server's upload
decoding, or file bytes (base64 in the JSON body); a path is never opened.
"""

from __future__ import annotations

from typing import Any

from helios_backends.errors import RequestError
from helios_backends.fields import unknown_field
from helios_backends.request import REQUEST_FIELDS, GenerationRequest

# Request fields vLLM-Omni carries in its own sampling params, under the core's names (prompt and
# negative_prompt come in the prompt itself).
SAMPLING_FIELDS = ("height", "width", "num_frames", "seed", "num_inference_steps", "guidance_scale", "max_sequence_length")
PROMPT_FIELDS = ("prompt", "negative_prompt")
# The adapter's own option: "latent" returns each chunk's latents instead of decoded frames.
OUTPUT_TYPES = ("frames", "latent")
ADAPTER_OPTIONS = frozenset({"output_type"})
# Every other request field is an extra param: the core's list, so a new option needs no change here.
HELIOS_EXTRA_PARAMS = frozenset(name for name in REQUEST_FIELDS if name not in SAMPLING_FIELDS + PROMPT_FIELDS) | ADAPTER_OPTIONS

# Keys vLLM-Omni itself writes into extra_args: `duration` from the request's `seconds` (already
# turned into num_frames), `video_codec_options` for its mp4 encoder, the CFG scales of its
# start-up warm-up request. They are not Helios options and are left to the engine.
ENGINE_EXTRA_ARGS = frozenset({"duration", "video_codec_options", "cfg_text_scale", "cfg_img_scale"})

MEDIA_FIELDS = ("image", "video")


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
    """The Helios options of a request's extra_args, as given; a key that is none is refused by name."""
    extra = sampling.extra_args or {}
    if not isinstance(extra, dict):
        raise RequestError("extra_params", f"must be a JSON object, got {type(extra).__name__}")
    for name in extra:
        if name not in HELIOS_EXTRA_PARAMS | ENGINE_EXTRA_ARGS:
            raise unknown_field(name, HELIOS_EXTRA_PARAMS)
    return {name: value for name, value in extra.items() if name in HELIOS_EXTRA_PARAMS}


def to_generation_request(prompt: Any, sampling) -> tuple[GenerationRequest, dict[str, Any]]:
    """The core request for one vLLM-Omni request, and the adapter's own options (output_type)."""
    text, negative, media = _prompt_fields(prompt)
    fields = helios_options(sampling)
    adapter = {name: fields.pop(name) for name in ADAPTER_OPTIONS if name in fields}
    if adapter.get("output_type", "frames") not in OUTPUT_TYPES:
        raise RequestError("output_type", f"must be one of {', '.join(OUTPUT_TYPES)}, got {adapter['output_type']!r}")
    unknown_media = sorted(set(media) - set(MEDIA_FIELDS))
    if unknown_media:
        raise RequestError(f"multi_modal_data.{unknown_media[0]}", "Helios takes only an image or a video")
    for name in MEDIA_FIELDS:
        if name in media:
            if name in fields:
                raise RequestError(name, f"give the {name} as an upload or in extra_params, not both")
            fields[name] = media[name]
    if sampling.num_outputs_per_prompt != 1:
        raise RequestError("num_outputs_per_prompt", f"must be 1 (one video per request), got {sampling.num_outputs_per_prompt}")
    fields["prompt"] = None if fields.get("prompt_schedule") else text
    fields["negative_prompt"] = negative
    fields.update({name: getattr(sampling, name) for name in SAMPLING_FIELDS})
    if not sampling.guidance_scale_provided:
        fields["guidance_scale"] = None
    return GenerationRequest.from_fields(fields), adapter
