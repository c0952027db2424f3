"""A probe sees every prompt encoding, transformer call and chunk decode, and changes nothing."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest

from .conftest import HEIGHT, WIDTH


class SectionLog:
    """Records each section's name and first input's shape, in order, and whether sections nest."""

    def __init__(self):
        self.entered: list[tuple[str, tuple]] = []
        self.depth = self.max_depth = 0

    @contextmanager
    def section(self, name: str, *inputs):
        first = inputs[0]
        self.entered.append((name, tuple(first.shape) if isinstance(first, torch.Tensor) else (len(first),)))
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        try:
            yield
        finally:
            self.depth -= 1


def test_a_probe_sees_each_encoding_step_and_decode_and_the_latents_are_unchanged(cores):
    core = cores["mid"]  # CFG: each step calls the transformer twice, each prompt side is encoded once
    log = SectionLog()
    probed = Helios(core.transformer, core.pipeline, core.scheduler, core.text_encoder, core.vae, probe=log)
    req = GenerationRequest(prompt="a boat", height=HEIGHT, width=WIDTH, num_frames=40, pyramid_steps=(1, 2, 1), seed=1)
    want = [c.latents for c in core.stream(req)]
    got = [c.latents for c in probed.stream(req)]
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, want))
    names = [name for name, _ in log.entered]
    assert names[:2] == ["text", "text"] and names.count("text") == 2
    assert names.count("transformer") == 2 * 2 * (1 + 2 + 1)  # chunks x CFG branches x steps
    assert names.count("vae") == 2 and names[-1] == "vae"
    assert log.max_depth == 1  # sections never nest
    assert [shape for name, shape in log.entered if name == "vae"][0][2] == got[0].shape[2]  # the chunk's latents
