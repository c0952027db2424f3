"""SGLang's sequence and CFG parallel flags run the core on SGLang's own process groups.

SGLang runs several workers on its CPU platform (gloo, one worker per --num-gpus), so these
tests start real 2-worker engines through SGLang's offline DiffGenerator and compare the frames
with one core process. The frames are compared as uint8 arrays (the mp4 is not: H.264 turns a
one-level rounding difference into visibly different macroblocks); the latents behind them agree
within 1e-5 relative (2e-7 seen), so a pixel may differ by one rounding step and no more.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helios_backends.request import GenerationRequest
from helios_backends.tiny import TINY_TRANSFORMER, make_tiny

from .conftest import core_frames, engine_env

# 4 heads so Ulysses can split them; 64x128 so every component's tokens divide by 2 (64x64: 9 at stage 1).
PARALLEL_TRANSFORMER = dataclasses.replace(TINY_TRANSFORMER, num_attention_heads=4, attention_head_dim=16, is_amplify_history=True)
REQUESTS = {
    "base": dict(prompt="a kite", height=64, width=128, num_frames=33, num_inference_steps=2, guidance_scale=4.0, seed=1),
    "distilled": dict(prompt="a kite", height=64, width=128, num_frames=33, seed=3),
}
SCRIPT = Path(__file__).with_name("offline_frames.py")


@pytest.fixture(scope="module")
def parallel_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sglang-parallel")
    return {v: make_tiny(root / v, v, transformer=PARALLEL_TRANSFORMER) for v in REQUESTS}


def engine_frames(folder, fp32_config, settings: dict, request: dict, out: Path) -> np.ndarray:
    engine = {"model_path": str(folder), "pipeline_config": str(fp32_config), "warmup_mode": "off", **settings}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(engine), json.dumps(request), str(out)],
        env=engine_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0 and out.is_file(), f"rc={result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return np.load(out)


CASES = [
    # No parallel flag: SGLang turns CFG parallel on by itself for Base (it guides by default).
    ("auto-cfg2", {"num_gpus": 2}, "base"),
    ("ulysses2", {"num_gpus": 2, "ulysses_degree": 2}, "distilled"),
    ("ring2", {"num_gpus": 2, "ring_degree": 2}, "distilled"),
]


@pytest.mark.parametrize(("name", "settings", "variant"), CASES, ids=[c[0] for c in CASES])
def test_two_sglang_workers_give_one_process_frames(name, settings, variant, parallel_folders, fp32_config, tmp_path):
    got = engine_frames(parallel_folders[variant], fp32_config, settings, REQUESTS[variant], tmp_path / "frames.npy")
    expected = core_frames(parallel_folders[variant], GenerationRequest(**REQUESTS[variant]))
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (name, int(diff.max()), float((diff > 0).mean()))


def _server_args(folder, **settings):
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    return ServerArgs.from_kwargs(model_path=str(folder), **settings)


def test_flags_map_onto_the_core_parallel_config(parallel_folders):
    from helios_backends.parallel import ParallelConfig
    from helios_sglang.parallel import core_parallel_config

    folder = parallel_folders["base"]
    cases = [
        ({"num_gpus": 2}, ParallelConfig(cfg_parallel=True)),
        ({"num_gpus": 2, "ulysses_degree": 2}, ParallelConfig(ulysses_degree=2)),
        ({"num_gpus": 4, "ulysses_degree": 2, "ring_degree": 2}, ParallelConfig(ulysses_degree=2, ring_degree=2)),
        ({"num_gpus": 4, "sp_degree": 2, "ulysses_degree": 2, "cfg_parallel_degree": 2}, ParallelConfig(ulysses_degree=2, cfg_parallel=True)),
        ({"num_gpus": 2, "dp_size": 2}, ParallelConfig()),
    ]
    for settings, expected in cases:
        assert core_parallel_config(_server_args(folder, **settings), folder) == expected, settings


def test_automatic_cfg_parallel_leaves_distilled_unsplit_and_uses_sequence_parallel(parallel_folders):
    """Distilled has no CFG: SGLang's automatic layout for 2 GPUs must not split it by CFG."""
    from helios_backends.parallel import ParallelConfig
    from helios_sglang.parallel import core_parallel_config

    folder = parallel_folders["distilled"]
    args = _server_args(folder, num_gpus=2)
    assert args.enable_cfg_parallel is False
    assert core_parallel_config(args, folder) == ParallelConfig(ulysses_degree=2)


BAD = [
    ("distilled", {"num_gpus": 2, "enable_cfg_parallel": True}, "--enable-cfg-parallel, i.e. --cfg-parallel-size=2: Helios-Distilled runs without CFG"),
    ("distilled", {"num_gpus": 2, "cfg_parallel_degree": 2}, "--cfg-parallel-size=2: Helios-Distilled runs without CFG"),
    ("base", {"num_gpus": 3, "cfg_parallel_degree": 3}, "--cfg-parallel-size=3: Helios has two CFG branches; accepted: 1 or 2"),
    ("base", {"num_gpus": 2, "tp_size": 2}, "--tp-size=2: the Helios core has no tensor parallelism"),
    ("base", {"num_gpus": 3, "ulysses_degree": 3}, "--ulysses-degree=3: 3 must divide the 4 attention heads; accepted: [1, 2, 4]"),
    ("base", {"num_gpus": 2, "kv_gather_degree": 2}, "--kv-gather-degree=2: the Helios core exchanges tokens"),
    ("base", {"num_gpus": 4, "ulysses_degree": 2}, "--num-gpus=4: must equal --dp-size x --ulysses-degree x --ring-degree x --cfg-parallel-size = 1 x 2 x 1 x 1"),
    ("base", {"num_gpus": 2, "sp_degree": 2, "ring_degree": 1, "ulysses_degree": 1}, "--sp-degree=2: must equal --ulysses-degree x --ring-degree"),
]


@pytest.mark.parametrize(("variant", "settings", "message"), BAD, ids=[m.split("=")[0].split(",")[0] + str(i) for i, (_, _, m) in enumerate(BAD)])
def test_combinations_the_core_cannot_run_are_refused_at_start_up_naming_the_flag(parallel_folders, variant, settings, message):
    with pytest.raises(ValueError) as error:
        _server_args(parallel_folders[variant], **settings)
    assert str(error.value).startswith(message), str(error.value)


def test_the_served_sequence_parallel_degree_is_ulysses_times_ring_after_sglangs_layout(parallel_folders):
    from helios_sglang.parallel import served_sp_degree

    cases = [
        ("base", {"num_gpus": 2}, 1),  # CFG parallel
        ("distilled", {"num_gpus": 2}, 2),  # SGLang's automatic sequence parallel
        ("base", {"num_gpus": 4, "ulysses_degree": 2, "ring_degree": 2}, 4),
        ("base", {"num_gpus": 4, "ring_degree": 2, "cfg_parallel_degree": 2}, 2),
    ]
    for variant, settings, degree in cases:
        assert served_sp_degree(_server_args(parallel_folders[variant], **settings)) == degree, settings


def test_sizes_the_served_sequence_parallel_degree_cannot_split_are_refused_before_queueing(parallel_folders, monkeypatch):
    from types import SimpleNamespace

    import sglang.multimodal_gen.runtime.server_args.server_args as global_args

    from helios_backends.errors import RequestError
    from helios_sglang.configs import HeliosCoreSamplingParams

    req = SimpleNamespace(extra={"explicit_fields": ["height", "width"]})
    monkeypatch.setattr(global_args, "_global_server_args", _server_args(parallel_folders["distilled"], num_gpus=2, ring_degree=2))
    with pytest.raises(RequestError, match=r"= 2 must divide the 27 current-chunk tokens of pyramid stage 1 of 3") as info:
        HeliosCoreSamplingParams(prompt="a kite", height=64, width=192).prepare_video_request_for_queue(req)
    assert info.value.field == "height"
    HeliosCoreSamplingParams(prompt="a kite", height=64, width=256).prepare_video_request_for_queue(req)
    monkeypatch.setattr(global_args, "_global_server_args", _server_args(parallel_folders["distilled"]))
    HeliosCoreSamplingParams(prompt="a kite", height=64, width=192).prepare_video_request_for_queue(req)  # one GPU: any token count
