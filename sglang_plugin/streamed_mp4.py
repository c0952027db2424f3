"""The served mp4, encoded chunk by chunk while the session generates the next chunk.

SGLang encodes a video after the whole pipeline has run (`save_outputs`), unless a stage hands
it the written file in `OutputBatch.output_file_paths`, which it then serves as it is. Its own
decoding stage does that with `EncodeWhileDecoding`, fed as the VAE finishes frames; the session
stage feeds the same encoder each chunk as the core's session hands it out. The file is SGLang's
in every respect: its pinned ffmpeg, its crf (output_compression) and preset (x264_preset), the
request's fps, at the path it would save to, so the bytes equal those of its after-the-fact save
(tests/sglang/gpu/test_gpu_streamed_mp4.py). The core's Mp4Writer cannot stand in: its PyAV x264 is
another build with other settings, so the served frames would change.

SGLang decides when a stage may write the file (`streamed_video_output_path`: a saved single
video returned as a path, no interpolation or upscaling, the output rank, on CUDA); otherwise,
and when its encoder fails, the stage hands it the frames as before.
"""

from __future__ import annotations

import torch

from sglang.multimodal_gen.runtime.pipelines_core.schedule_batch import Req
from sglang.multimodal_gen.runtime.pipelines_core.stages.encode_while_decoding import EncodeWhileDecoding, streamed_video_output_path
from sglang.multimodal_gen.runtime.server_args import ServerArgs


class StreamedMp4:
    """SGLang's streamed encoder fed with the core's uint8 chunks."""

    def __init__(self, path: str, batch: Req, device: torch.device):
        self.path = path
        self._encoder = EncodeWhileDecoding(path, batch)
        self._device = device

    @classmethod
    def open(cls, batch: Req, server_args: ServerArgs, batch_size: int, device: torch.device) -> StreamedMp4 | None:
        """The encoder for `batch`'s video where SGLang lets a stage write it, else None."""
        path = streamed_video_output_path(batch, server_args, batch_size)
        return None if path is None else cls(path, batch, device)

    def write(self, frames: torch.Tensor) -> None:
        """Queue a chunk's (1, T, H, W, 3) uint8 frames (host memory is fine)."""
        video = frames[0].to(self._device, non_blocking=True).permute(3, 0, 1, 2).unsqueeze(0)
        # The encoder takes [0, 1] and truncates x * 255 to uint8: each byte's bin centre gives it back exactly.
        self._encoder((video.float() + 0.5) / 255)

    def finish(self) -> list[str] | None:
        """The written file's path, or None when SGLang has to save the frames itself."""
        return self._encoder.finish()

    def abort(self) -> None:
        """Stop the encoder and remove the partial file."""
        self._encoder.abort()
