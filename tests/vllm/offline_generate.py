"""Run requests through vLLM-Omni's offline `Omni(...).generate` and save what comes back.

Used by test_offline.py in a subprocess, so the engine's process-wide state stays out of pytest:
    python offline_generate.py FOLDER OUT.npz '{"step_execution": false}' '[{"seed": 1, ...}, ...]'
Each request is the sampling fields plus `extra_args`; OUT.npz holds `out<i>` per request.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from vllm_omni.entrypoints.omni import Omni
from vllm_omni.inputs.data import OmniDiffusionSamplingParams


def main() -> None:
    folder, out, engine_args, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    omni = Omni(model=folder, dtype="float32", enforce_eager=True, **engine_args)
    results = {}
    for i, spec in enumerate(requests):
        prompt = {"prompt": spec.pop("prompt")}
        outputs = omni.generate(prompt, OmniDiffusionSamplingParams(**spec))
        (output,) = outputs
        (video,) = output.images
        results[f"out{i}"] = video.numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    np.savez(out, **results)
    omni.close()


if __name__ == "__main__":
    main()
