"""On CUDA the served mp4 is encoded chunk by chunk during the session, into the bytes SGLang's
own save of the same frames writes (helios_sglang.streamed_mp4). SGLang streams only on CUDA:
on its CPU platform, as in the rest of the suite, the frames are handed over and it saves them.

GPU-only, so outside the CPU suite (scripts/test sglang leaves tests/sglang/gpu out); run on the
H200 in the SGLang bundle's site that `bench/engines-gpu sglang` unpacks:

    PYTHONPATH=/tmp/helios-sglang-site python3 -m pytest tests/sglang/gpu
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ..conftest import HEIGHT, WIDTH, as_served, start_server

if not torch.cuda.is_available():
    pytest.fail("tests/sglang/gpu needs a CUDA device (CI runs the CPU suites only)", pytrace=False)

FPS = 24


def _chunks(height: int, width: int, seed: int) -> list[np.ndarray]:
    """Three chunks of a smooth random clip (T, H, W, 3) uint8, with every byte value present."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, height, width, 3))
    return [np.clip(base + rng.integers(-24, 25, (n, height, width, 3)), 0, 255).astype(np.uint8) for n in (9, 12, 12)]


@pytest.mark.parametrize("height, width", [(64, 128), (72, 120)])  # 72x120: SGLang pads to 16 with its scale filter
def test_chunks_streamed_to_sglangs_encoder_make_the_bytes_of_its_own_save(tmp_path, height, width):
    from helios_sglang.streamed_mp4 import StreamedMp4

    chunks = _chunks(height, width, seed=height)
    request = SimpleNamespace(fps=FPS, num_frames=33, output_compression=None, x264_preset=None)
    mp4 = StreamedMp4(str(tmp_path / "streamed.mp4"), request, torch.device("cuda"))
    for chunk in chunks:
        mp4.write(torch.from_numpy(chunk).pin_memory()[None])
    assert mp4.finish() == [str(tmp_path / "streamed.mp4")]
    as_served(np.concatenate(chunks), tmp_path / "saved.mp4", fps=FPS)  # the frames path: SGLang's save after the session
    assert (tmp_path / "streamed.mp4").read_bytes() == (tmp_path / "saved.mp4").read_bytes()


def test_served_mp4_is_written_during_the_session_where_sglang_would_save_it(tiny_folders, fp32_config, tmp_path):
    folder = tiny_folders["distilled"]
    server = start_server(folder, fp32_config, tmp_path, platform="cuda")
    try:
        status, job = server.post_video({"prompt": "a red fox", "height": HEIGHT, "width": WIDTH, "num_frames": 33, "seed": 7})
        assert status == 200, job
        done = server.wait_job(job["id"])
        assert done["status"] == "completed", done
        served = server.video_frames(job["id"])
    finally:
        server.stop()
    log = server.process.log.read_text(errors="replace")
    saved = Path(done["file_path"])
    assert saved == tmp_path / "outputs" / f"{job['id']}.mp4"  # SGLang's folder and name for the job
    assert f"mp4 encoded chunk by chunk during the session: {saved}" in log, log[-3000:]
    assert served.shape == (33, HEIGHT, WIDTH, 3)
    # The frames are not compared with the core's here: the tiny fp32 model on CUDA differs from
    # one process to the next (two servers of the same code, measured on the H200), encoding aside.
    # The test above proves the encoding equal to SGLang's own save; the CPU suite the frames.
