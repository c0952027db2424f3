"""vLLM-Omni's front door for Helios: what a request may name, and the endpoints Helios cannot honour.

vLLM-Omni's `/v1/videos` form fetches `image_reference` / `video_reference` URLs in the API server
and takes options the Helios core has no counterpart for (frame interpolation with a model path,
a second guidance scale ...); unknown form fields are dropped by FastAPI. `refused_form_field`
names the first such field of a form; `HeliosRequestCheck` (helios_vllm.http) answers it with 400.
`/v1/omni/sleep` would park the engine (sleep needs vLLM's CUDA sleep allocator, which the core's
weights do not live in), so `SLEEP_ROUTES` are refused there too, and the server keeps serving.

`check_engine_options` refuses, at start-up, engine flags the core would otherwise ignore.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from starlette.datastructures import UploadFile

from helios_backends.errors import RequestError
from helios_backends.front_door import is_set, refused_field

from .requests import HELIOS_EXTRA_PARAMS

NEVER_FETCHED = "this server never fetches a URL named in a request; upload the file as `input_reference` or send it base64 in extra_params"
NEVER_OPENED = "this server never opens a path named in a request"
NOT_OFFERED = "not offered by the Helios core; leave it unset"

# /v1/videos form field -> why it is refused.
REFUSED_FORM_FIELDS = {
    "image_reference": NEVER_FETCHED,
    "video_reference": NEVER_FETCHED,
    "audio_reference": NEVER_FETCHED,
    "input_reference": "must be an uploaded file (an image or a video); " + NEVER_FETCHED,
    "input_references": "Helios takes one `input_reference` upload",
    "frame_interpolation_model_path": NEVER_OPENED,
    "enable_frame_interpolation": NOT_OFFERED,
    "frame_interpolation_exp": NOT_OFFERED,
    "frame_interpolation_scale": NOT_OFFERED,
    "guidance_scale_2": NOT_OFFERED,
    "true_cfg_scale": NOT_OFFERED,
    "boundary_ratio": NOT_OFFERED,
    "flow_shift": "Helios' shift comes from its scheduler config; " + NOT_OFFERED,
    "generate_sound": NOT_OFFERED,
    "sound_duration": NOT_OFFERED,
    "start_time_seconds": NOT_OFFERED,
    "control_reference": NOT_OFFERED,
    "control_type": NOT_OFFERED,
    "source_video": NOT_OFFERED,
    "source_audio": NOT_OFFERED,
    "video_noise_mask": NOT_OFFERED,
    "audio_noise_mask": NOT_OFFERED,
}
SLEEP_ROUTES = frozenset({"/v1/omni/sleep", "/v1/omni/wakeup"})
SLEEP_REFUSAL = (
    "sleep mode is not supported for Helios: its weights are loaded by the Helios core, outside vLLM's "
    "sleep allocator, so they could not leave the GPU; the server keeps serving"
)


@cache
def form_field_names() -> frozenset[str]:
    """The fields vLLM-Omni's /v1/videos form reads (its form parser's parameters)."""
    from vllm_omni.entrypoints.openai.video.generation.helpers import _parse_video_form

    return frozenset(name for name in inspect.signature(_parse_video_form).parameters if name != "raw_request")


def refused_form_field(items: list[tuple[str, Any]]) -> RequestError | None:
    """The first form field Helios refuses (by name) or the form does not read (unknown), else None."""
    fields = [(name, value) for name, value in items if not (name == "input_reference" and isinstance(value, UploadFile))]
    error = refused_field(fields, REFUSED_FORM_FIELDS)
    if error is not None:
        return error
    known = form_field_names()
    for name, value in fields:
        if name.removesuffix("[]") in HELIOS_EXTRA_PARAMS:
            continue  # a Helios option sent outside extra_params: http.form_request refuses it by its name
        if name not in known and is_set(value):
            accepted = sorted(known - set(REFUSED_FORM_FIELDS))
            return RequestError(name, f"is not a /v1/videos field (accepted: {accepted})")
    return None


def core_quantization(od_config: Any) -> str | None:
    """`--quantization fp8` -> the core's FP8 block linears (helios_backends.fp8: per-channel weight
    and per-token activation scales); any other method is refused at start-up, naming it."""
    quantization = od_config.quantization_config
    if quantization is None or od_config.quantization_config_is_auto_detected:
        return None
    name = getattr(quantization, "get_name", lambda: quantization)()
    if name != "fp8":
        raise ValueError(f"--quantization {name}: not supported by the Helios core; accepted: fp8 (FP8 block linears) or unset")
    return "fp8"


def check_engine_options(od_config: Any) -> None:
    """Refuse, at start-up, engine flags the Helios core would otherwise ignore, naming the flag."""
    core_quantization(od_config)
    if (od_config.cache_backend or "none") != "none":
        raise ValueError(f"--cache-backend {od_config.cache_backend}: cache backends are not supported by the Helios core; leave it unset")
    if od_config.enable_sleep_mode:
        raise ValueError(f"--enable-sleep-mode: {SLEEP_REFUSAL.removesuffix('; the server keeps serving')}")
    for field, flag in (("vae_use_slicing", "--vae-use-slicing"), ("vae_use_tiling", "--vae-use-tiling")):
        if getattr(od_config, field):
            raise ValueError(f"{flag}: the Helios core decodes each chunk a few frames at a time already, not by "
                             "diffusers' VAE slicing or tiling; leave it unset")
    if od_config.vae_fast_path != "lossless":
        raise ValueError(f"--vae-fast-path {od_config.vae_fast_path}: the Helios core's chunk decoder has its own fused path "
                         "(--additional-config helios.vae_dtype sets its precision); leave it unset")
    attention = od_config.diffusion_attention_config
    if attention.default is not None or attention.per_role:
        raise ValueError("--diffusion-attention-backend / --diffusion-attention-config: the Helios core picks its attention "
                         "kernel for the device; leave them unset")
    if od_config.fa_deterministic:
        raise ValueError("--fa-deterministic: the Helios core picks its attention kernel for the device; leave it unset")
