"""Run one request through SGLang's offline DiffGenerator and save its frames (T, H, W, 3) uint8.

A script, not a fixture: DiffGenerator spawns its workers, which re-import the main module.
Usage: offline_frames.py ENGINE_JSON REQUEST_JSON OUT.npy
"""

import json, sys
import numpy as np
def main():
    from sglang.multimodal_gen.runtime.entrypoints.diffusion_generator import DiffGenerator
    engine, request, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    gen = DiffGenerator.from_pretrained(**engine)
    result = gen.generate(sampling_params_kwargs={**request, "save_output": False})
    np.save(out, np.asarray(result.frames))
    gen.shutdown()
if __name__ == "__main__":
    main()
