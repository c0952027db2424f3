"""One request through SGLang-Diffusion's pipeline builder and the Helios pipeline on a stand-in NPU platform.

Run by test_ascend.py in a subprocess from the checkout's root, because the stand-in torch_npu
and the engine's platform choice are process-wide:
    python -m tests.sglang.ascend_request FOLDER PIPELINE_CONFIG OUT_DIR '{"prompt": ..., "seed": ...}'
The stand-in platform (tests/sglang/ascend_platform.py) is declared as an entry point of a
test-only distribution and chosen by SGLANG_DIFFUSION_PLATFORM_OVERRIDE; SGLang's
GPU worker (one rank, in this process) sets the platform's device, joins its process groups and
builds the pipeline its registry names for the folder, and the request, prepared as SGLang's
DiffGenerator prepares one, runs through the worker's `execute_forward`. OUT_DIR gets frames.npy and run.json (the platform chosen, the core's ops, the
stand-in's kernel calls).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from helios_harness.launch import free_port
from tests import npu_standin
from tests.sglang.ascend_platform import ENTRY_POINT


def main() -> None:
    folder, pipeline_config, out, spec = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
    standin = npu_standin.build(device_count=1)
    sys.modules["torch_npu"] = standin
    npu_standin.register_entry_points(out / "site", {"sglang.multimodal_gen.platforms": {ENTRY_POINT: "tests.sglang.ascend_platform:activate"}})
    os.environ["SGLANG_DIFFUSION_PLATFORM_OVERRIDE"] = ENTRY_POINT

    from sglang.multimodal_gen.configs.sample.sampling_params import SamplingParams
    from sglang.multimodal_gen.runtime.entrypoints.utils import prepare_request
    from sglang.multimodal_gen.runtime.managers.gpu_worker import GPUWorker
    from sglang.multimodal_gen.runtime.platforms import current_platform
    from sglang.multimodal_gen.runtime.server_args import ServerArgs, set_global_server_args

    import helios_sglang  # noqa: F401  (SGLANG_EXTERNAL_MODEL_PACKAGE in a server; registers the pipelines)

    server_args = ServerArgs.from_kwargs(model_path=folder, pipeline_config=pipeline_config, warmup_mode="off")
    set_global_server_args(server_args)  # as SGLang's scheduler does before its worker builds the pipeline
    worker = GPUWorker(local_rank=0, rank=0, master_port=free_port(), server_args=server_args)
    pipeline = worker.pipeline
    sampling = SamplingParams.from_user_sampling_params_args(folder, server_args=server_args, save_output=False, **spec)
    request = prepare_request(server_args=server_args, sampling_params=sampling)
    sampling.prepare_video_request_for_queue(request)
    result = worker.execute_forward([request])
    assert result.error is None, result.error
    (frames,) = result.output
    np.save(out / "frames.npy", frames)
    helios = pipeline.get_module("helios")
    (out / "run.json").write_text(json.dumps({
        "platform": type(current_platform).__qualname__,
        "device_type": current_platform.device_type,
        "pipeline": type(pipeline).__module__ + "." + type(pipeline).__qualname__,
        "ops": type(helios.transformer.ops).__name__,
        "calls": dict(standin.calls),
    }))


if __name__ == "__main__":
    main()
