"""The `helios` command: tiny model, streamed mp4, latents file, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helios_harness.launch import free_port
from helios_backends.cli import main
from helios_backends.media_read import decode_mp4
from helios_backends.media_write import Mp4Writer

from .conftest import HEIGHT, WIDTH, random_image, random_video, relative_error


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("helios-cache")


def run_cli(tmp_path, *args, cache=None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELIOS_CACHE": str(cache or tmp_path / "cache")}
    helios = Path(sys.executable).with_name("helios")
    return subprocess.run([str(helios), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          input=stdin)


def cli_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_make_tiny_writes_the_released_layout(tmp_path):
    for variant, cls in (("base", "HeliosPipeline"), ("mid", "HeliosPyramidPipeline"), ("distilled", "HeliosPyramidPipeline")):
        folder = tmp_path / variant
        assert main(["make-tiny", str(folder), "--variant", variant]) == 0
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == cls
        for part in ("transformer/diffusion_pytorch_model.safetensors.index.json", "transformer/config.json",
                     "text_encoder/config.json", "tokenizer/tokenizer.json", "vae/config.json",
                     "scheduler/scheduler_config.json"):
            assert (folder / part).is_file(), part
    assert json.loads((tmp_path / "distilled" / "model_index.json").read_text())["is_distilled"] is True
    assert json.loads((tmp_path / "mid" / "model_index.json").read_text())["is_cfg_zero_star"] is True


def test_generate_with_the_built_in_model_streams_a_decodable_mp4(tmp_path, tiny_cache):
    result = run_cli(tmp_path, "generate", "--prompt", "a fox in snow", "--height", "64", "--width", "128",
                     "--num-frames", "66", "--output", "fox.mp4", "--output-latents", "fox.safetensors", cache=tiny_cache)
    assert result.returncode == 0, result.stderr
    assert "wrote fox.mp4 (65 frames" in result.stdout
    assert "step/s" not in result.stderr  # no progress bar when stderr is not a terminal
    video = decode_mp4(tmp_path / "fox.mp4")
    assert video.shape == (65, 64, 128, 3)
    latents = load_file(tmp_path / "fox.safetensors")["latents"]
    assert latents.shape == (1, 16, 18, 8, 16)
    assert (tiny_cache / "tiny-distilled-v1" / "model_index.json").is_file()


def test_latents_file_equals_diffusers_latent_output(checkpoints, tmp_path):
    folder, pipe = checkpoints["mid"]
    out = tmp_path / "lat.safetensors"
    assert main(["generate", "--model", str(folder), "--prompt", "a lake", "--height", str(HEIGHT), "--width", str(WIDTH),
                 "--num-frames", "40", "--pyramid-steps", "2", "1", "1", "--seed", "3", "--negative-prompt", "dull",
                 "--output", str(tmp_path / "lake.mp4"), "--output-latents", str(out)]) == 0
    with torch.no_grad():
        ref = pipe(prompt="a lake", negative_prompt="dull", height=HEIGHT, width=WIDTH, num_frames=40,
                   pyramid_num_inference_steps_list=[2, 1, 1], guidance_scale=5.0, use_zero_init=True, zero_steps=1,
                   generator=torch.Generator().manual_seed(3), output_type="latent").frames
    assert relative_error(load_file(out)["latents"], ref) <= 1e-5


def test_image_and_video_inputs_are_read_from_files(checkpoints, tmp_path):
    folder, _ = checkpoints["distilled"]
    random_image().save(tmp_path / "in.png")
    with Mp4Writer(tmp_path / "in.mp4", WIDTH, HEIGHT, fps=24) as w:
        w.write(np.stack([np.asarray(f) for f in random_video(33)]))
    common = ["--model", str(folder), "--prompt", "a lake", "--height", str(HEIGHT), "--width", str(WIDTH),
              "--num-frames", "33", "--pyramid-steps", "1", "1", "1"]
    assert main(["generate", *common, "--image", str(tmp_path / "in.png"), "--output", str(tmp_path / "i2v.mp4")]) == 0
    assert main(["generate", *common, "--video", str(tmp_path / "in.mp4"), "--output", str(tmp_path / "v2v.mp4")]) == 0
    assert decode_mp4(tmp_path / "i2v.mp4").shape == decode_mp4(tmp_path / "v2v.mp4").shape == (33, HEIGHT, WIDTH, 3)


def test_prompt_schedule_file_drives_interactive_prompts(checkpoints, tmp_path):
    folder, _ = checkpoints["distilled"]
    (tmp_path / "schedule.csv").write_text("start_chunk,prompt\n0,a calm lake\n1,a storm over the lake\n")
    assert main(["generate", "--model", str(folder), "--prompt-schedule", str(tmp_path / "schedule.csv"),
                 "--height", str(HEIGHT), "--width", str(WIDTH), "--num-frames", "66", "--pyramid-steps", "1", "1", "1",
                 "--output", str(tmp_path / "lake.mp4")]) == 0
    assert decode_mp4(tmp_path / "lake.mp4").shape[0] == 65


def _lake_latents(tmp_path, folder, name, *options) -> torch.Tensor:
    assert main(["generate", "--model", str(folder), *options, "--interpolation-steps", "2", "--height", str(HEIGHT),
                 "--width", str(WIDTH), "--num-frames", "99", "--pyramid-steps", "1", "1", "1",
                 "--output", str(tmp_path / f"{name}.mp4"), "--output-latents", str(tmp_path / f"{name}.safetensors")]) == 0
    return load_file(tmp_path / f"{name}.safetensors")["latents"]


def test_prompts_from_a_file_change_one_chunk_boundary_per_line_as_the_schedule_does(checkpoints, tmp_path):
    folder, _ = checkpoints["distilled"]
    (tmp_path / "schedule.csv").write_text("start_chunk,prompt\n0,a calm lake\n1,a storm over the lake\n2,a frozen lake\n")
    (tmp_path / "changes.txt").write_text("a storm over the lake\n\na frozen lake\n")  # blank lines are skipped
    scheduled = _lake_latents(tmp_path, folder, "scheduled", "--prompt-schedule", str(tmp_path / "schedule.csv"))
    live = _lake_latents(tmp_path, folder, "live", "--prompt", "a calm lake", "--prompts-from", str(tmp_path / "changes.txt"))
    unchanged = _lake_latents(tmp_path, folder, "unchanged", "--prompt", "a calm lake")
    assert torch.equal(live, scheduled)
    assert not torch.equal(live, unchanged)


def test_prompts_from_stdin_change_the_video_while_it_streams(tiny_cache, tmp_path):
    """A line piped in before the first chunk ends takes over at chunk 1, as a schedule starting there."""
    common = ["generate", "--height", str(HEIGHT), "--width", str(WIDTH), "--num-frames", "66", "--pyramid-steps", "1", "1", "1"]
    (tmp_path / "schedule.csv").write_text("start_chunk,prompt\n0,a fox\n1,a fox in a storm\n")
    scheduled = run_cli(tmp_path, *common, "--prompt-schedule", "schedule.csv", "--output", "s.mp4",
                        "--output-latents", "s.safetensors", cache=tiny_cache)
    live = run_cli(tmp_path, *common, "--prompt", "a fox", "--prompts-from", "-", "--output", "l.mp4",
                   "--output-latents", "l.safetensors", cache=tiny_cache, stdin="a fox in a storm\n")
    assert scheduled.returncode == live.returncode == 0, live.stderr
    assert torch.equal(load_file(tmp_path / "l.safetensors")["latents"], load_file(tmp_path / "s.safetensors")["latents"])
    assert decode_mp4(tmp_path / "l.mp4").shape[0] == 65


def test_bad_options_give_one_line_naming_the_option(checkpoints, capsys, tmp_path):
    folder, _ = checkpoints["distilled"]
    m = ["generate", "--model", str(folder), "--prompt", "x"]
    assert "--height: must be a multiple of 64" in cli_error(capsys, *m, "--height", "100")
    assert "--num-frames: must be >= 1" in cli_error(capsys, *m, "--num-frames", "0")
    assert "--image: task i2v needs an image" in cli_error(capsys, *m, "--task", "i2v")
    assert "--image: cannot read image" in cli_error(capsys, *m, "--image", str(tmp_path / "missing.png"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert "--video: cannot read video" in cli_error(capsys, *m, "--video", str(tmp_path / "bad.mp4"))
    assert "--pyramid-steps: needs 3 values" in cli_error(capsys, *m, "--pyramid-steps", "1", "1")
    assert "--guidance-scale: must be >= 0.0" in cli_error(capsys, *m, "--guidance-scale", "-2")
    assert "--model: model folder not found" in cli_error(capsys, "generate", "--model", str(tmp_path / "none"), "--prompt", "x")
    assert "--image-noise-sigma: needs 0 <= min <= max <= 1" in cli_error(capsys, *m, "--image-noise-sigma", "0.5", "0.1")
    if not torch.cuda.is_available():
        assert "--device: device 'cuda': no CUDA GPU is available" in cli_error(capsys, *m, "--device", "cuda")
    assert "--device: device 'npu'" in cli_error(capsys, *m, "--device", "npu")
    assert "--vae-frames-per-call: must be >= 0" in cli_error(capsys, *m, "--vae-frames-per-call", "-1")
    assert "--quantization: quantization fp8 needs an NVIDIA GPU" in cli_error(capsys, *m, "--quantization", "fp8")
    assert "--prompts-from: cannot read" in cli_error(capsys, *m, "--prompts-from", str(tmp_path / "missing.txt"))
    assert not list(tmp_path.glob("*.mp4.partial"))


def generate_a_lake(folder, tmp_path, *options: str):
    """`helios generate` of one 33-frame chunk with extra options; the request the core runs for it."""
    from helios_backends.request import GenerationRequest

    out = tmp_path / "lake.mp4"
    assert main(["generate", "--model", str(folder), "--prompt", "a lake", "--height", str(HEIGHT), "--width", str(WIDTH),
                 "--num-frames", "33", "--pyramid-steps", "1", "1", "1", *options, "--output", str(out)]) == 0
    assert decode_mp4(out).shape == (33, HEIGHT, WIDTH, 3)
    return GenerationRequest(prompt="a lake", height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(1, 1, 1))


def test_whole_chunk_vae_decode_gives_the_same_frames_within_rounding(checkpoints, tmp_path):
    from helios_backends.pipeline import Helios

    folder, _ = checkpoints["distilled"]
    req = generate_a_lake(folder, tmp_path, "--vae-frames-per-call", "0")
    frame_wise, chunk_wise = (torch.cat([c.frames for c in Helios.from_pretrained(folder, vae_frames_per_call=n).stream(req)], 1).int()
                              for n in (1, None))
    assert (frame_wise - chunk_wise).abs().max() <= 1


def test_vae_dtype_bfloat16_decodes_in_bfloat16_and_its_frames_stay_near_the_fp32_decode(checkpoints, tmp_path):
    from helios_backends.pipeline import Helios

    folder, _ = checkpoints["distilled"]
    req = generate_a_lake(folder, tmp_path, "--vae-dtype", "bfloat16")
    cores = {d: Helios.from_pretrained(folder, vae_dtype=d) for d in ("float32", "bfloat16")}
    assert cores["bfloat16"].vae.dtype == torch.bfloat16
    fp32, bf16 = (torch.cat([c.frames for c in core.stream(req)], 1).int() for core in cores.values())
    difference = (fp32 - bf16).abs().float()
    assert 0 < difference.mean() < 2 and difference.max() <= 32


def test_a_failed_write_leaves_no_mp4_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with Mp4Writer(tmp_path / "x.mp4", 64, 64, fps=24) as w:
            w.write(np.zeros((3, 64, 64, 3), np.uint8))
            raise RuntimeError("model failed mid-run")
    assert list(tmp_path.iterdir()) == []


def test_odd_frame_sizes_are_refused_by_the_writer(tmp_path):
    with pytest.raises(ValueError, match="even frame sizes"):
        Mp4Writer(tmp_path / "x.mp4", 65, 64, fps=24)


def test_console_script_is_installed():
    assert Path(sys.executable).with_name("helios").is_file()


def test_torchrun_with_ulysses_writes_the_single_process_latents(tmp_path, tiny_cache):
    """`helios generate` under torchrun (2 gloo ranks): rank 0 writes the files, latents unchanged."""
    common = ["--prompt", "a fox", "--height", "64", "--width", "128", "--num-frames", "33", "--pyramid-steps", "1", "1", "1"]
    assert run_cli(tmp_path, "generate", *common, "--output", "one.mp4", "--output-latents", "one.safetensors", cache=tiny_cache).returncode == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    helios = Path(sys.executable).with_name("helios")
    env = {**os.environ, "HELIOS_CACHE": str(tiny_cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), str(helios), "generate", *common,
                             "--ring-degree", "2", "--output", "two.mp4", "--output-latents", "two.safetensors"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote two.mp4") == 1
    one, two = (load_file(tmp_path / f"{n}.safetensors")["latents"] for n in ("one", "two"))
    assert relative_error(two, one) <= 1e-5
    assert decode_mp4(tmp_path / "two.mp4").shape == (33, 64, 128, 3)


def test_resident_blocks_are_refused_outside_layer_offload_and_beyond_the_streamed_blocks(capsys, checkpoints):
    folder, _ = checkpoints["distilled"]
    base = ["generate", "--model", str(folder), "--prompt", "x"]
    assert cli_error(capsys, *base, "--offload-resident-blocks", "1") == \
        "helios: error: --offload-resident-blocks: only with --offload layer (got --offload none)"
    assert "--offload-resident-blocks: must be between 0 and 1 (the model's 2 blocks less --offload-slots 1), got 2" in cli_error(
        capsys, *base, "--offload", "layer", "--offload-slots", "1", "--offload-resident-blocks", "2")
    assert "--offload-slots: must be between 1 and 2 (the model's blocks), got 3" in cli_error(
        capsys, *base, "--offload", "layer", "--offload-slots", "3")


def test_parallel_degrees_without_torchrun_are_refused(capsys, checkpoints):
    folder, _ = checkpoints["distilled"]
    err = cli_error(capsys, "generate", "--model", str(folder), "--prompt", "x", "--ulysses-degree", "2")
    assert "= 2 must equal the 1 processes" in err
    assert "--ulysses-degree: 3 must divide the 2 attention heads" in cli_error(
        capsys, "generate", "--model", str(folder), "--prompt", "x", "--ulysses-degree", "3")


def test_sizes_the_ranks_cannot_split_are_refused_before_torchrun_starts_any_group(capsys, checkpoints, monkeypatch, tmp_path):
    folder, _ = checkpoints["distilled"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = cli_error(capsys, "generate", "--model", str(folder), "--prompt", "x", "--ring-degree", "2", "--height", "64",
                    "--width", "192", "--output", str(tmp_path / "out.mp4"))
    assert err.endswith("--height: ulysses_degree x ring_degree = 2 must divide the 27 current-chunk tokens of pyramid stage 1 of 3 "
                        "at height 64, width 192 (every sequence-parallel rank takes an equal share of each call's history and "
                        "current-chunk tokens); nearest accepted: height 128 (width 192), or width 128 or 256 (height 64)"), err


def test_the_default_dtype_is_bfloat16_on_an_accelerator_and_float32_on_the_cpu():
    """`helios generate --device cuda` without --dtype runs the released weights' bfloat16, as diffusers users do."""
    import torch

    from helios_backends.cli import default_dtype

    assert default_dtype(torch.device("cuda")) == "bfloat16"  # torch_npu registers "npu" as a non-CPU type too
    assert default_dtype(torch.device("cpu")) == "float32"


def test_layer_offload_decodes_in_bfloat16_unless_told_otherwise():
    """`--offload layer` is the 8 GB profile: an fp32 decode's activations would not fit beside it."""
    from helios_backends.cli import build_parser, default_vae_dtype

    assert default_vae_dtype("layer") == "bfloat16"
    assert default_vae_dtype("model") == default_vae_dtype("none") == "float32"
    args = build_parser().parse_args(["generate", "--prompt", "a fox", "--offload", "layer", "--vae-dtype", "float32"])
    assert args.vae_dtype == "float32"  # an explicit choice is kept
