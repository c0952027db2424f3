"""SGLang's offload flags select the core's offload mode; the video is the same as without offload."""

from __future__ import annotations

import numpy as np
import pytest

from helios_backends.request import GenerationRequest

from .conftest import HEIGHT, WIDTH, as_served, core_frames, run_generate
from .test_generate import _assert_wrote

# Each case: SGLang flags, and the (offload, offload_slots, offload_resident) the core gets for the 2-block tiny model.
CASES = [
    ([], ("none", 2, 0)),
    (["--text-encoder-cpu-offload", "true"], ("model", 2, 0)),
    (["--dit-cpu-offload", "true"], ("model", 2, 0)),
    (["--vae-cpu-offload", "true"], ("model", 2, 0)),
    (["--dit-layerwise-offload", "true"], ("layer", 2, 0)),
    (["--layerwise-offload-components", "dit"], ("layer", 2, 0)),
    (["--component-residency", "transformer=layerwise-offload"], ("layer", 2, 0)),
]


def _server_args(folder, flags):
    from sglang.multimodal_gen.runtime.server_args import ServerArgs, prepare_server_args

    return prepare_server_args(["--model-path", str(folder), *flags]) if flags else ServerArgs.from_kwargs(model_path=str(folder))


@pytest.mark.parametrize(("flags", "expected"), CASES, ids=[" ".join(f) or "none" for f, _ in CASES])
def test_offload_flags_map_onto_the_core_offload_mode(tiny_folders, flags, expected):
    from helios_sglang.offload import core_offload

    assert core_offload(_server_args(tiny_folders["mid"], flags), num_layers=2) == expected


def test_prefetch_layers_are_streaming_slots_and_resident_layers_stay_on_the_device(tiny_folders):
    """Slots: 1 running + prefetched; resident layers are the core's pinned blocks. SGLang's
    fractions are shares of the layers (40 here)."""
    import copy

    from sglang.multimodal_gen.runtime.server_args import ServerArgs
    from helios_sglang.offload import core_offload

    layerwise = ServerArgs.from_kwargs(model_path=str(tiny_folders["mid"]), dit_layerwise_offload=True)

    def slots(**values):
        args = copy.copy(layerwise)  # not dataclasses.replace: that re-validates against the 2-block folder
        for name, value in values.items():
            setattr(args, name, value)
        return core_offload(args, 40)

    assert slots() == ("layer", 2, 0)
    assert slots(dit_offload_prefetch_size=3) == ("layer", 4, 0)
    assert slots(dit_offload_prefetch_size=0.1, dit_layerwise_resident_layers=2) == ("layer", 5, 2)


def test_more_device_slots_than_blocks_are_refused_at_start_up(tiny_folders):
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    with pytest.raises(ValueError, match=r"^--dit-offload-prefetch-size / --dit-layerwise-resident-layers: .* = 3 blocks on the device, but the transformer has 2"):
        ServerArgs.from_kwargs(model_path=str(tiny_folders["mid"]), dit_layerwise_offload=True, dit_offload_prefetch_size=2)


@pytest.mark.parametrize(("flags", "mode"), [(["--dit-layerwise-offload", "true"], "layer"), (["--text-encoder-cpu-offload", "true"], "model")],
                         ids=["layer", "model"])
def test_generate_with_offload_writes_the_video_of_no_offload(tiny_folders, fp32_config, tmp_path, flags, mode):
    folder = tiny_folders["mid"]
    result = run_generate(
        ["--model-path", str(folder), "--pipeline-config-path", str(fp32_config), "--warmup-mode", "off", *flags,
         "--prompt", "a fox", "--height", str(HEIGHT), "--width", str(WIDTH), "--num-frames", "33", "--seed", "9",
         "--config", str(_steps(tmp_path)), "--output-path", str(tmp_path), "--output-file-name", "fox.mp4"],
        cwd=tmp_path,
    )
    _assert_wrote(result, tmp_path / "fox.mp4")
    assert f"Helios core: offload={mode} " in result.stdout + result.stderr  # the core really ran offloaded
    # After the request the worker's core holds no block copy on the device: the session released them.
    assert "Helios core: request released; offloaded blocks on the device: []" in result.stdout + result.stderr
    from helios_backends.media_read import decode_mp4

    request = GenerationRequest(prompt="a fox", height=HEIGHT, width=WIDTH, num_frames=33, seed=9, pyramid_steps=(1, 1, 1))
    expected = core_frames(folder, request)
    np.testing.assert_array_equal(decode_mp4(tmp_path / "fox.mp4"), as_served(expected, tmp_path / "ref.mp4"))


def _steps(tmp_path):
    path = tmp_path / "steps.json"
    path.write_text('{"pyramid_steps": [1, 1, 1]}')
    return path
