"""SGLang sampling parameters -> the core's `GenerationRequest`.

SGLang's shared fields (height, steps, guidance ...) always carry a value, but only the ones the
user set are handed to the core (SGLang records them as `explicit_fields`): unset ones stay None
so the core applies the checkpoint's own variant defaults (Base, Mid and Distilled differ), read
from the folder itself rather than from a name SGLang matched. Every value is type-checked and
decoded by the core's `GenerationRequest.from_fields`, as on every other front end.
"""

from __future__ import annotations

from typing import Any

import torch

from helios_backends.errors import RequestError
from helios_backends.request import REQUEST_FIELDS, GenerationRequest

from .front_door import engine_media

# Request fields SGLang's own SamplingParams carries, under the core's names; passed on only when
# the user set them (SGLang's own warm-up, which sets no field explicitly, hands on its sizes and
# step count: WARMUP_FIELDS). prompt and seed are always passed on.
SHARED_FIELDS = frozenset({"negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "max_sequence_length"})
WARMUP_FIELDS = frozenset({"height", "width", "num_frames", "num_inference_steps"})

# Every other request field is a Helios sampling field (None = the core's default), also the HTTP
# extra fields: the core's list, so a new request option needs no change here.
HELIOS_FIELDS = tuple(name for name in REQUEST_FIELDS if name not in SHARED_FIELDS | {"prompt", "seed"})


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


def to_generation_request(params: Any, explicit_fields: set[str] | None) -> GenerationRequest:
    """Map one SGLang SamplingParams onto a core request.

    explicit_fields None means the request did not come from a user (SGLang's own warm-up),
    whose concrete sizes and step count are then taken as they are.
    """
    if (getattr(params, "num_outputs_per_prompt", 1) or 1) != 1:
        raise RequestError("num_outputs_per_prompt", f"Helios makes one video per prompt (accepted: 1), got {params.num_outputs_per_prompt}")
    fields: dict[str, Any] = {"prompt": _prompt(params.prompt), "seed": _seed(params.seed)}
    for name in SHARED_FIELDS & (WARMUP_FIELDS if explicit_fields is None else explicit_fields):
        fields[name] = getattr(params, name)
    for name in HELIOS_FIELDS:
        value = getattr(params, name, None)
        if value is not None:
            fields[name] = value
    fields.update(engine_media(params))  # an input_reference upload SGLang saved for this request
    return GenerationRequest.from_fields(fields)


def core_generator(params: Any, plan) -> torch.Generator | None:
    """SGLang's `generator_device: "cpu"` asks for device-independent noise: the core then draws on a
    CPU generator seeded with the request's seed; otherwise it seeds one on its own device."""
    if params.generator_device == "cpu" and plan.seed is not None:
        return torch.Generator("cpu").manual_seed(plan.seed)
    return None


def explicit_fields_of(req: Any) -> set[str] | None:
    fields = req.extra.get("explicit_fields")
    return None if fields is None else set(fields)
