"""SGLang's offload settings -> the core's `offload` mode, `offload_slots` and `offload_resident`.

The core has two ways to save device memory: "model" (the text encoder lives on the host and
streams through the device block by block to encode prompts; the transformer and VAE, which
alternate every chunk, stay) and "layer" (also the transformer blocks live on the host and stream through
`offload_slots` device copies, the next blocks copied while the current one runs). SGLang's
per-component flags are read as the memory the user asked to save:

    --dit-layerwise-offload, --layerwise-offload-components dit|transformer|all,
    --component-residency transformer=layerwise-offload              -> "layer"
    --dit-cpu-offload, --text-encoder-cpu-offload, --vae-cpu-offload,
    --image-encoder-cpu-offload, --cpu-offload-components ...,
    --component-residency <component>=component-offload|snapshot-offload -> "model"

With "layer", SGLang's --dit-offload-prefetch-size (layers copied ahead; 0 = one) gives the
streamed blocks' device copies, offload_slots = 1 + prefetched, and
--dit-layerwise-resident-layers the blocks kept on the device for good (offload_resident: the
first ones), so the device holds as many blocks as SGLang would and the resident ones are never
copied again.

These are SGLang's resolved values: on a GPU SGLang turns component offload on by itself for
video models, which lands on "model". On its CPU platform SGLang offloads nothing by itself
and only explicit flags apply; the core's offload also runs there (host to host).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from sglang.multimodal_gen.runtime.managers.memory_managers.layerwise_offload_components import (
    normalize_layerwise_offload_components,
)

COMPONENTS = ("transformer", "text_encoder", "vae")
OFFLOADED_MODES = ("component-offload", "snapshot-offload")
LAYERWISE_DIT_SELECTIONS = frozenset({"dit", "transformer", "all"})


class CoreOffload(NamedTuple):
    """Helios.from_pretrained's offload, offload_slots and offload_resident."""

    offload: str
    slots: int = 2
    resident: int = 0


def core_offload(server_args: Any, num_layers: int) -> CoreOffload:
    """The core's offload settings for SGLang's flags, or a start-up ValueError naming the flag."""
    layerwise = set(normalize_layerwise_offload_components(server_args.layerwise_offload_components) or ())
    # What the user named per component (--component-residency first, then explicit legacy
    # flags: SGLang's own priority); None where nothing names it.
    dit_mode = server_args.explicit_residency_mode("transformer")
    if dit_mode == "layerwise-offload" or (dit_mode is None and (server_args.dit_layerwise_offload or layerwise & LAYERWISE_DIT_SELECTIONS)):
        return _layerwise(server_args, num_layers)
    if any(server_args.explicit_residency_mode(component) in OFFLOADED_MODES for component in COMPONENTS):
        return CoreOffload("model")
    legacy = (server_args.dit_cpu_offload, server_args.text_encoder_cpu_offload, server_args.vae_cpu_offload,
              server_args.image_encoder_cpu_offload)
    if any(legacy) or server_args.cpu_offload_components or layerwise - LAYERWISE_DIT_SELECTIONS:
        return CoreOffload("model")
    return CoreOffload("none")


def _layers(server_args: Any, name: str, flag: str, num_layers: int) -> int:
    """SGLang's convention: a value in (0, 1) is a share of the layers, >= 1 a layer count."""
    value = float(getattr(server_args, name) or 0.0)
    if value < 0 or math.isnan(value):
        raise ValueError(f"{flag}={value}: accepted: 0, a share of the layers in (0, 1), or a layer count >= 1")
    return math.ceil(value * num_layers) if value < 1 else int(value)


def _layerwise(server_args: Any, num_layers: int) -> CoreOffload:
    prefetch = max(1, _layers(server_args, "dit_offload_prefetch_size", "--dit-offload-prefetch-size", num_layers))
    resident = _layers(server_args, "dit_layerwise_resident_layers", "--dit-layerwise-resident-layers", num_layers)
    slots = 1 + prefetch
    if slots + resident > num_layers:
        raise ValueError(
            f"--dit-offload-prefetch-size / --dit-layerwise-resident-layers: 1 running + {prefetch} prefetched + "
            f"{resident} resident = {slots + resident} blocks on the device, but the transformer has {num_layers}; accepted: a "
            f"total <= {num_layers} (or no --dit-layerwise-offload)"
        )
    return CoreOffload("layer", slots, resident)
