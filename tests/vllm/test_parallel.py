"""vLLM-Omni's Ulysses / Ring / CFG-parallel settings run the core on the engine's own process groups.

Two diffusion workers on the CPU platform (gloo), step mode, against one process's latents.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vllm_omni.diffusion.data import DiffusionParallelConfig

from helios_backends.parallel import ParallelConfig
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.tiny import TINY_TRANSFORMER, make_tiny
from helios_vllm.pipeline import core_parallel_config

from .test_offline import offline

# 4 heads so Ulysses can split them; 64x128 so every component's tokens divide by 2 (64x64: 9 at stage 1).
PARALLEL_TRANSFORMER = dataclasses.replace(TINY_TRANSFORMER, num_attention_heads=4, attention_head_dim=16, is_amplify_history=True)
FIELDS = {
    "base": dict(prompt="a kite", height=64, width=128, num_frames=40, num_inference_steps=2, guidance_scale=4.0, seed=1),
    "distilled": dict(prompt="a kite", height=64, width=128, num_frames=40, pyramid_steps=(1, 1, 1), seed=3),
}
CASES = [("ulysses2", {"ulysses_degree": 2}, "distilled"), ("ring2", {"ring_degree": 2}, "distilled"),
         ("cfg2", {"cfg_parallel_size": 2}, "base")]


@pytest.fixture(scope="module")
def parallel_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("helios-parallel")
    return {v: make_tiny(root / v, v, transformer=PARALLEL_TRANSFORMER) for v in FIELDS}


def core_latents(folder, fields) -> torch.Tensor:
    request = GenerationRequest(**fields)
    return torch.cat([c.latents.float() for c in Helios.from_pretrained(folder).stream(request, decode=False)], dim=2)


def test_core_parallel_config_maps_ulysses_ring_and_cfg():
    config = DiffusionParallelConfig(ulysses_degree=2, ring_degree=2, cfg_parallel_size=2)
    assert core_parallel_config(config, 4) == ParallelConfig(ulysses_degree=2, ring_degree=2, cfg_parallel=True)
    assert core_parallel_config(DiffusionParallelConfig(), 4) == ParallelConfig()


@pytest.mark.parametrize("settings, flag", [
    ({"tensor_parallel_size": 2}, "--tensor-parallel-size"),
    ({"pipeline_parallel_size": 2}, "--pipeline-parallel-size"),
    ({"ulysses_degree": 8}, "--ulysses-degree"),  # 8 does not divide the 4 heads
    ({"ulysses_mode": "advanced_uaa"}, "--ulysses-mode"),
])
def test_settings_the_core_cannot_honour_are_refused_naming_the_flag(settings, flag):
    with pytest.raises(ValueError, match=flag):
        core_parallel_config(DiffusionParallelConfig(**settings), 4)


@pytest.mark.parametrize("name, settings, variant", CASES, ids=[c[0] for c in CASES])
def test_two_engine_workers_equal_one_process(name, settings, variant, parallel_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HELIOS_CPU_DEVICES", "2")  # two CPU "devices" whatever the core count
    fields = FIELDS[variant]
    sampling = {**{k: v for k, v in fields.items() if k != "pyramid_steps"}, "extra_args": {"output_type": "latent"}}
    if "pyramid_steps" in fields:
        sampling["extra_args"]["pyramid_steps"] = list(fields["pyramid_steps"])
    engine = {"step_execution": True, "parallel_config": settings}
    (latents,) = offline(parallel_folders[variant], tmp_path, engine, [sampling])
    ref = core_latents(parallel_folders[variant], fields)
    got = torch.from_numpy(latents)
    assert got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-5, name


def test_distributed_layerwise_offload_is_refused_naming_the_flag(parallel_folders):
    from vllm_omni.diffusion.data import OmniDiffusionConfig

    from helios_vllm.pipeline import core_offload

    with pytest.raises(ValueError, match="enable-distributed-layerwise-offload"):
        core_offload(OmniDiffusionConfig(model=str(parallel_folders["distilled"]), enable_distributed_layerwise_offload=True))


def test_layer_offload_with_resident_layers_keeps_that_many_blocks_on_the_device(parallel_folders):
    """vLLM-Omni's rank-local layer offload with `resident_layers` is the core's --offload-resident-blocks."""
    from vllm_omni.diffusion.data import OmniDiffusionConfig

    from helios_vllm.pipeline import core_offload

    folder = str(parallel_folders["distilled"])
    resident = {"mode": "layer", "components": ["dit"], "layer_options": {"dit": {"weight_transfer": "rank-local", "resident_layers": 1}}}
    assert core_offload(OmniDiffusionConfig(model=folder, diffusion_offload_config=resident)) == ("layer", 1)
    assert core_offload(OmniDiffusionConfig(model=folder, enable_layerwise_offload=True)) == ("layer", 0)


def test_the_engine_refuses_sizes_its_sequence_parallel_degree_cannot_split_before_queueing(parallel_folders):
    from types import SimpleNamespace

    from vllm_omni.diffusion.data import OmniDiffusionConfig
    from vllm_omni.errors import OmniClientError
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    from helios_vllm.pipeline import get_pre_process_func

    folder = str(parallel_folders["distilled"])

    def request(width: int):
        return SimpleNamespace(prompt="a kite", sampling_params=OmniDiffusionSamplingParams(height=64, width=width))

    ring2 = get_pre_process_func(OmniDiffusionConfig(model=folder, parallel_config=DiffusionParallelConfig(ring_degree=2)))
    with pytest.raises(OmniClientError, match=r"height: ulysses_degree x ring_degree = 2 must divide the 27 current-chunk tokens"):
        ring2(request(192))
    ring2(request(256))
    get_pre_process_func(OmniDiffusionConfig(model=folder))(request(192))  # one worker: any token count


def test_the_http_check_refuses_sizes_the_served_sequence_parallel_degree_cannot_split(parallel_folders):
    from types import SimpleNamespace

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from helios_vllm.http import HeliosRequestCheck

    async def queued(request):
        return PlainTextResponse("queued")

    app = Starlette(routes=[Route("/v1/videos", queued, methods=["POST"])], middleware=[Middleware(HeliosRequestCheck)])
    client = TestClient(app)
    form = {"prompt": "a kite", "height": "64", "width": "192", "extra_params": '{"pyramid_steps": [1, 1, 1]}'}
    for ulysses, ring, status in ((None, 2, 400), (2, None, 400), (None, None, 200)):
        app.state.args = SimpleNamespace(model=str(parallel_folders["distilled"]), ulysses_degree=ulysses, ring_degree=ring)
        response = client.post("/v1/videos", data=form)
        assert response.status_code == status, (ulysses, ring, response.text)
    assert client.post("/v1/videos", data={**form, "width": "256"}).text == "queued"
    app.state.args = SimpleNamespace(model=str(parallel_folders["distilled"]), ulysses_degree=2, ring_degree=None)
    error = client.post("/v1/videos", data=form).json()["error"]
    assert error["param"] == "height" and "= 2 must divide the 27 current-chunk tokens" in error["message"]
