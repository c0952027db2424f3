"""Ulysses, Ring, Ulysses x Ring and CFG-parallel give one process's latents (gloo, 2 and 4 ranks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helios_harness.launch import free_port
from helios_backends.config import TransformerConfig
from helios_backends.errors import RequestError
from helios_backends.parallel import ParallelConfig, ParallelGroups
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.tiny import TINY_TRANSFORMER, make_tiny

from .conftest import relative_error

# 4 heads so Ulysses can split them 4 ways; 64x256 so every component's tokens divide by 4.
PARALLEL_TRANSFORMER = dataclasses.replace(TINY_TRANSFORMER, num_attention_heads=4, attention_head_dim=16, is_amplify_history=True)
SIZE = dict(height=64, width=256)
REQUESTS = {
    "base": GenerationRequest(prompt="a kite", num_frames=40, num_inference_steps=2, guidance_scale=4.0, seed=1, **SIZE),
    "mid": GenerationRequest(prompt="a kite", num_frames=40, pyramid_steps=(2, 1, 1), guidance_scale=4.0, seed=2, **SIZE),
    "distilled": GenerationRequest(prompt="a kite", num_frames=40, pyramid_steps=(1, 1, 1), seed=3, **SIZE),
}
CASES = {
    2: [("ulysses2", ParallelConfig(ulysses_degree=2), ("base", "mid", "distilled")),
        ("ring2", ParallelConfig(ring_degree=2), ("base", "mid", "distilled")),
        ("cfg2", ParallelConfig(cfg_parallel=True), ("base", "mid"))],
    4: [("ulysses2xring2", ParallelConfig(ulysses_degree=2, ring_degree=2), ("base", "mid", "distilled")),
        ("ulysses4", ParallelConfig(ulysses_degree=4), ("distilled",)),
        ("cfg2xulysses2", ParallelConfig(ulysses_degree=2, cfg_parallel=True), ("mid",))],
}


def latents(core: Helios, request: GenerationRequest) -> torch.Tensor:
    return torch.cat([c.latents for c in core.stream(request, decode=False)], dim=2)


def worker(rank, world, port, folders, out_dir):
    torch.set_num_threads(1)  # ranks share 2 cores: oversubscribed threads slow every collective
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for name, config, variants in CASES[world]:
            groups = ParallelGroups.from_world(config)
            for variant in variants:
                core = Helios.from_pretrained(folders[variant], parallel=groups)
                result = latents(core, REQUESTS[variant])
                if rank == 0:
                    torch.save(result, f"{out_dir}/{name}-{variant}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    return {v: str(make_tiny(root / v, v, transformer=PARALLEL_TRANSFORMER)) for v in REQUESTS}


@pytest.fixture(scope="module")
def single_process(folders):
    return {v: latents(Helios.from_pretrained(folders[v]), REQUESTS[v]) for v in REQUESTS}


@pytest.mark.parametrize("world", [2, 4])
def test_parallel_runs_equal_one_process(world, folders, single_process, tmp_path):
    mp.spawn(worker, args=(world, free_port(), folders, str(tmp_path)), nprocs=world, join=True)
    for name, _, variants in CASES[world]:
        for variant in variants:
            got = torch.load(tmp_path / f"{name}-{variant}.pt")
            assert relative_error(got, single_process[variant]) <= 1e-5, (name, variant)


def test_ulysses_degree_must_divide_the_heads():
    with pytest.raises(RequestError, match="ulysses_degree: 3 must divide the 4 attention heads"):
        ParallelConfig(ulysses_degree=3).validate(4)


def test_degrees_must_multiply_to_the_world_size():
    with pytest.raises(RequestError, match=r"= 4 must equal the 2 processes"):
        ParallelConfig(ulysses_degree=2, cfg_parallel=True).validate(4, world_size=2)


def shard_worker(rank, port, folder, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        core = Helios.from_pretrained(folder, parallel=ParallelGroups.from_world(ParallelConfig(ring_degree=2)))
        bad = dataclasses.replace(REQUESTS["distilled"], width=192)  # 3 tokens per frame row at stage 0
        try:
            latents(core, bad)
        except RequestError as exc:
            if rank == 0:
                with open(out, "w") as f:
                    f.write(str(exc))
        try:  # what a caller that skips the plan meets: the sharding's own check
            core.transformer.ops.shard_tokens(torch.zeros(1, 7, 1), 4)
        except RequestError as exc:
            if rank == 0:
                with open(out, "a") as f:
                    f.write("\n" + str(exc))
        cfg_on_distilled = ParallelGroups(ParallelConfig(cfg_parallel=True), cfg=dist.group.WORLD)
        try:
            Helios(core.transformer, core.pipeline, core.scheduler, core.text_encoder, core.vae, cfg_on_distilled).start(REQUESTS["distilled"])
        except RequestError as exc:
            if rank == 0:
                with open(out, "a") as f:
                    f.write("\n" + str(exc))
    finally:
        dist.destroy_process_group()


def test_token_counts_the_degree_does_not_divide_are_refused_by_the_plan_and_the_sharding_as_is_cfg_parallel_without_cfg(folders, tmp_path):
    out = tmp_path / "error.txt"
    mp.spawn(shard_worker, args=(free_port(), folders["distilled"], str(out)), nprocs=2, join=True)
    planned, sharded, cfg = out.read_text().splitlines()
    assert planned.startswith("height: ulysses_degree x ring_degree = 2 must divide the 27 current-chunk tokens of pyramid stage 1 of 3")
    assert "nearest accepted: height 128 (width 192), or width 128 or 256 (height 64)" in planned
    assert sharded.startswith("size: ulysses_degree x ring_degree = 2 must divide the 3 current-chunk tokens; pick a height/width")
    assert "cfg_parallel needs guidance_scale > 1" in cfg
