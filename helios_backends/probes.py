"""Probes: how a caller (the benchmarks) observes the core's work without patching it.

`Helios` enters `probe.section(name, *inputs)` around each prompt encoding ("text", inputs: the
prompts), each transformer call ("transformer", inputs: the call's arguments) and each chunk's
VAE decode ("vae", inputs: the latents); what a probe does there (time it, read the memory peak,
keep a call's inputs to replay it) is its own business. The default, NO_PROBE, does nothing, and the
transformer is then called directly: without a probe the run is the same code as ever.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

SECTIONS = ("text", "transformer", "vae")


class Probe(Protocol):
    def section(self, name: str, *inputs) -> AbstractContextManager[None]:
        """Entered around one piece of work: `name` is one of SECTIONS, `inputs` what the work is given."""
        ...


class NoProbe:
    def section(self, name: str, *inputs) -> AbstractContextManager[None]:
        return nullcontext()


NO_PROBE = NoProbe()


class ProbedDenoiser:
    """The sampler's denoiser (the transformer, or its CUDA-graph replay) with each call inside
    probe.section("transformer", *args). Everything else the sampler reads (config, device, dtype,
    encode_text, rope_for) is the denoiser's own, passed through."""

    def __init__(self, denoiser, probe: Probe):
        self.denoiser = denoiser
        self.probe = probe

    def __call__(self, *args):
        with self.probe.section("transformer", *args):
            return self.denoiser(*args)

    def __getattr__(self, name: str):
        return getattr(self.denoiser, name)
