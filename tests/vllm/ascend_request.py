"""One request through vLLM-Omni's model loader and the Helios pipeline on a stand-in Ascend platform.

Run by test_ascend.py in a subprocess from the checkout's root, because the stand-in torch_npu
and the engine's platform choice are process-wide:
    python -m tests.vllm.ascend_request FOLDER OUT_DIR '{"prompt": ..., "seed": ..., "extra_args": {...}}'
The stand-in platforms (tests/vllm/ascend_platform.py) are registered as entry points of a
test-only distribution, vLLM and vLLM-Omni pick them by their own plugin discovery, the engine's
`initialize_model` builds the pipeline its registry names for the folder, and the request runs
through the pipeline's `forward` as vLLM-Omni's runner calls it. OUT_DIR gets latents.pt and
run.json (the platforms chosen, the core's ops, the stand-in's kernel calls).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests import npu_standin


def main() -> None:
    folder, out, spec = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    standin = npu_standin.build(device_count=1)
    sys.modules["torch_npu"] = standin
    npu_standin.register_entry_points(out / "site", {
        "vllm.platform_plugins": {"helios_ascend_standin": "tests.vllm.ascend_platform:activate"},
        "vllm_omni.platform_plugins": {"helios_ascend_standin": "tests.vllm.ascend_platform:activate_omni"},
    })

    from vllm.platforms import current_platform
    from vllm_omni.diffusion.data import OmniDiffusionConfig
    from vllm_omni.diffusion.registry import initialize_model
    from vllm_omni.diffusion.request import OmniDiffusionRequest
    from vllm_omni.diffusion.worker.request_batch import DiffusionRequestBatch
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams
    from vllm_omni.platforms import current_omni_platform

    import helios_vllm

    helios_vllm.register()
    od_config = OmniDiffusionConfig.from_kwargs(model=folder, dtype=torch.float32, enforce_eager=True)
    od_config.enrich_config()  # the pipeline class named by the folder's model_index.json, as the engine resolves it
    pipeline = initialize_model(od_config)
    prompt = {"prompt": spec.pop("prompt")}
    request = OmniDiffusionRequest(prompt=prompt, sampling_params=OmniDiffusionSamplingParams(**spec), request_id="ascend-0")
    with torch.no_grad():
        latents = pipeline.forward(DiffusionRequestBatch([request])).output
    torch.save(latents, out / "latents.pt")
    ops = pipeline.helios.transformer.ops
    (out / "run.json").write_text(json.dumps({
        "platform": type(current_platform).__qualname__,
        "omni_platform": type(current_omni_platform).__qualname__,
        "device_type": current_omni_platform.device_type,
        "pipeline": type(pipeline).__module__ + "." + type(pipeline).__qualname__,
        "ops": type(ops).__name__,
        "calls": dict(standin.calls),
    }))


if __name__ == "__main__":
    main()
