"""LoRA on the CUDA fast path: merged into fused QKV/KV weights in place, under captured graphs.

Names say GPU: these need a CUDA device (run `scripts/test-gpu`; CI has none). The adapters are
written by hand in diffusers' key layout, so no peft is needed on the device.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from helios_backends.ops import TorchOps
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest

from ..conftest import HEIGHT, WIDTH, relative_error

if not torch.cuda.is_available():
    pytest.fail("tests/gpu needs a CUDA device (CI runs the CPU suites only)", pytrace=False)


def write_adapter(path, config, seed: int, rank: int) -> str:
    """Random LoRA on every attention projection and the FFN's first linear, diffusers' keys."""
    generator = torch.Generator().manual_seed(seed)
    dim, ffn = config.inner_dim, config.ffn_dim
    state = {}
    for i in range(config.num_layers):
        targets = {f"attn{a}.{m}": (dim, dim) for a in (1, 2) for m in ("to_q", "to_k", "to_v", "to_out.0")}
        targets["ffn.net.0.proj"] = (ffn, dim)
        for module, (out_f, in_f) in targets.items():
            key = f"transformer.blocks.{i}.{module}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=generator) * 0.3
            state[f"{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=generator) * 0.3
    save_file(state, path)
    return str(path)


def request(seed: int) -> GenerationRequest:
    return GenerationRequest(prompt="a fox", height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(1, 1, 1), seed=seed)


def latents(helios: Helios, req: GenerationRequest) -> torch.Tensor:
    return torch.cat([c.latents.float().cpu() for c in helios.stream(req, decode=False)], 2)


def test_gpu_switching_loras_under_captured_graphs_equals_the_eager_lora_runs(checkpoints, tmp_path):
    """Graphs captured without a LoRA replay with each merged adapter (weights are updated in
    place, so no recapture), equal to the eager path, and clearing restores the base run."""
    folder, _ = checkpoints["distilled"]
    graphed = Helios.from_pretrained(folder, device="cuda", dtype="float32")
    eager = Helios.from_pretrained(folder, device="cuda", dtype="float32", cuda_graphs=False, ops=TorchOps())
    assert hasattr(graphed.transformer.blocks[0].attn1, "to_qkv")  # the fused layout is what the LoRA lands in
    config = graphed.transformer.config
    first = write_adapter(tmp_path / "a.safetensors", config, seed=1, rank=4)
    second = write_adapter(tmp_path / "b.safetensors", config, seed=2, rank=2)

    base = latents(graphed, request(0))
    captured = len(graphed.denoiser.graphs)
    assert captured > 0
    for adapters in ([(first, 0.8)], [(second, 1.2)], [(first, 0.5), (second, -0.7)]):
        graphed.set_loras(adapters)
        eager.set_loras(adapters)
        got, want = latents(graphed, request(0)), latents(eager, request(0))
        assert relative_error(got, want) <= 1e-4, adapters
        assert relative_error(got, base) > 1e-2, adapters  # the replayed graphs did read the merged weights
    assert len(graphed.denoiser.graphs) == captured
    graphed.set_loras([])
    assert relative_error(latents(graphed, request(0)), base) <= 1e-6

