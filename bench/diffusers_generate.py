"""One Helios video with diffusers, written as a diffusers user writes it: the baseline of
bench/bench_fresh.py (run as a fresh process, so its imports and loading count as a user's do).

    python bench/diffusers_generate.py --model FOLDER --device cuda --prompt "..." --output out.mp4 \\
        [--height 384 --width 640 --num-frames 240 --pyramid-steps 1 1 1 --seed 0]

bf16 weights on a GPU (fp32 on the CPU), the pipeline class from the folder's model_index.json,
the frames written to an H.264 mp4 with PyAV (diffusers' `export_to_video` needs imageio or
OpenCV, neither of which the project installs). Options not given keep the pipeline's defaults.
"""

from __future__ import annotations

import argparse

import av
import numpy as np
import torch
from diffusers import DiffusionPipeline


def write_mp4(frames: np.ndarray, path: str, fps: int) -> None:
    """(T, H, W, 3) floats in [0, 1] -> H.264 yuv420p."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in (frames * 255).round().astype(np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--pyramid-steps", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--output", default="diffusers.mp4")
    args = parser.parse_args()

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    options = {k: v for k, v in dict(height=args.height, width=args.width, num_frames=args.num_frames,
                                     num_inference_steps=args.steps).items() if v is not None}
    if args.pyramid_steps:
        options["pyramid_num_inference_steps_list"] = args.pyramid_steps
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    frames = pipe(prompt=args.prompt, generator=generator, output_type="np", **options).frames[0]
    write_mp4(frames, args.output, args.fps)


if __name__ == "__main__":
    main()
