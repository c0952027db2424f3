import sys, types, os, time
os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0a")
pkg = types.ModuleType("flashinfer"); pkg.__path__ = ["/tmp/fi-src/flashinfer"]; sys.modules["flashinfer"] = pkg
import torch
from flashinfer.jit.attention.modules import gen_single_prefill_module, get_single_prefill_uri
args = ("fa3", torch.bfloat16, torch.bfloat16, torch.bfloat16, 128, 128, 0, False, False, False, False)
print(get_single_prefill_uri(*args))
spec = gen_single_prefill_module(*args)
print(spec.name, spec.sources, spec.build_dir, spec.ninja_path, spec.jit_library_path)
spec.write_ninja()
print(open(spec.ninja_path).read())
