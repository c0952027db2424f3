"""The Ascend NPU path, tested on CPU with a stand-in torch_npu (tests/npu_standin.py).

No tensor here lives on an NPU: the stand-in's ops run on CPU tensors. What these tests prove is
that NpuOps calls torch_npu's ops with their documented signatures, layouts and dtypes (the
stand-in raises otherwise), that what those calls compute (the documented formulas) equals
TorchOps, so the core's latents on NpuOps equal its latents on TorchOps, and that device
selection and the import guard behave. They do not prove the real kernels' numerics, speed or
memory on Ascend hardware, which has not been run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helios_npu.device
from helios_backends.cli import main
from helios_backends.errors import CheckpointError
from helios_backends.loading import resolve_device
from helios_backends.ops import TorchOps, default_ops
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
from helios_backends.tiny import make_tiny
from helios_npu.ops import NpuOps

from . import npu_standin
from .conftest import relative_error

ROOT = Path(__file__).resolve().parents[1]
MISSING_LINE = "torch_npu is not installed or cannot load (needs an Ascend CANN stack)"


@pytest.fixture
def standin(monkeypatch):
    """The stand-in as `import torch_npu`, with the once-per-process settings not yet applied."""
    module = npu_standin.build(device_count=1)
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setattr(helios_npu.device, "_configured", False)
    return module


@pytest.fixture
def no_torch_npu(monkeypatch):
    """`import torch_npu` raises ImportError, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)


@pytest.fixture(params=[
    'OSError("libhccl.so: cannot open shared object file: No such file or directory")',
    'RuntimeError("Failed to load the backend extension: torch_npu")',
    'ImportError("libascendcl.so: cannot open shared object file")',
])
def broken_torch_npu(request, tmp_path, monkeypatch):
    """An installed torch_npu package whose import fails the way it does without CANN."""
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text(f"raise {request.param}\n")
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))


def model_tensors(dtype, batch=2, tokens=12, heads=2, head_dim=16, table_batch=1):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, tokens, heads, head_dim, generator=g).to(dtype) for _ in range(3))
    angles = torch.rand(table_batch, tokens, head_dim // 2, generator=g) * 6.0
    return q, k, v, angles.cos(), angles.sin()


# -- the ops, one by one -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_npu_ops_compute_what_torch_ops_compute(standin, dtype, tol):
    q, k, v, cos, sin = model_tensors(dtype)
    ops, ref = NpuOps(), TorchOps()
    weight = torch.randn(32).to(dtype)
    x = q.flatten(2)
    cases = {
        "attention": (ops.attention(q, k, v), ref.attention(q, k, v)),
        "rms_norm": (ops.rms_norm(x, weight, 1e-6), ref.rms_norm(x, weight, 1e-6)),
        "rms_norm with an fp32 weight": (ops.rms_norm(x, weight.float(), 1e-6), ref.rms_norm(x, weight.float(), 1e-6)),
        "rope": (ops.rope(q, cos, sin), ref.rope(q, cos, sin)),
    }
    for name, (ours, theirs) in cases.items():
        assert ours.dtype == theirs.dtype == dtype, name
        assert ours.shape == theirs.shape, name
        assert relative_error(ours, theirs) <= tol, name
    assert standin.calls == {"npu_fusion_attention": 1, "npu_rms_norm": 2, "npu_rotary_mul": 1}


def test_rope_with_per_sample_tables_calls_the_kernel_per_sample(standin):
    q, _, _, cos, sin = model_tensors(torch.float32, batch=2, table_batch=2)
    assert relative_error(NpuOps().rope(q, cos, sin), TorchOps().rope(q, cos, sin)) <= 1e-6
    assert standin.calls["npu_rotary_mul"] == 2


def test_rope_splits_the_batch_to_keep_b_times_n_under_1000(standin):
    q, _, _, cos, sin = model_tensors(torch.float32, batch=3, tokens=4, heads=400, head_dim=4)
    assert relative_error(NpuOps().rope(q, cos, sin), TorchOps().rope(q, cos, sin)) <= 1e-6
    assert standin.calls["npu_rotary_mul"] == 2  # batches of 2 (800 < 1000) and 1


def test_interleave_mode_is_helios_pair_rotation_and_half_mode_is_not(standin):
    """The documented 'interleave' formula with repeat-interleaved tables is Helios' pair RoPE."""
    q, _, _, cos, sin = model_tensors(torch.float32)
    r1, r2 = cos.repeat_interleave(2, -1).unsqueeze(2), sin.repeat_interleave(2, -1).unsqueeze(2)
    helios = TorchOps().rope(q, cos, sin)
    assert relative_error(standin.npu_rotary_mul(q, r1, r2, rotary_mode="interleave"), helios) <= 1e-6
    assert relative_error(standin.npu_rotary_mul(q, r1, r2, rotary_mode="half"), helios) > 0.1


def _bsnd(dtype=torch.bfloat16, b=1, s=8, n=2, d=16):
    return torch.randn(b, s, n, d).to(dtype)


def _tables(s=8, d=16, dtype=torch.float32, b=1):
    return torch.rand(b, s, 1, d).to(dtype), torch.rand(b, s, 1, d).to(dtype)


REJECTED = {
    "attention without input_layout": lambda m: m.npu_fusion_attention(_bsnd(), _bsnd(), _bsnd(), 2),
    "attention with a misspelt argument": lambda m: m.npu_fusion_attention(_bsnd(), _bsnd(), _bsnd(), 2, layout="BSND"),
    "attention on BSND tensors told BNSD": lambda m: m.npu_fusion_attention(_bsnd(), _bsnd(), _bsnd(), 2, "BNSD"),
    "attention with the wrong head_num": lambda m: m.npu_fusion_attention(_bsnd(), _bsnd(), _bsnd(), 4, "BSND"),
    "attention on float64": lambda m: m.npu_fusion_attention(*(_bsnd(torch.float64) for _ in range(3)), 2, "BSND"),
    "attention with mixed dtypes": lambda m: m.npu_fusion_attention(_bsnd(), _bsnd(torch.float32), _bsnd(), 2, "BSND"),
    "attention with key and value shapes differing": lambda m: m.npu_fusion_attention(_bsnd(), _bsnd(), _bsnd(s=4), 2, "BSND"),
    "attention with head_dim over 768": lambda m: m.npu_fusion_attention(*(_bsnd(d=1024) for _ in range(3)), 2, "BSND"),
    "attention on 3-D tensors told BSND": lambda m: m.npu_fusion_attention(*(_bsnd().flatten(2) for _ in range(3)), 2, "BSND"),
    "rms_norm with gamma in another dtype": lambda m: m.npu_rms_norm(_bsnd().flatten(2), torch.ones(32)),
    "rms_norm with a gamma that is not trailing": lambda m: m.npu_rms_norm(_bsnd().flatten(2), torch.ones(8, dtype=torch.bfloat16)),
    "rms_norm on a 1-D input": lambda m: m.npu_rms_norm(torch.ones(32), torch.ones(32)),
    "rotary with half-width tables": lambda m: m.npu_rotary_mul(_bsnd(torch.float32), *_tables(d=8), rotary_mode="interleave"),
    "rotary interleave with per-sample tables": lambda m: m.npu_rotary_mul(_bsnd(torch.float32, b=2), *_tables(b=2), rotary_mode="interleave"),
    "rotary with tables in another dtype": lambda m: m.npu_rotary_mul(_bsnd(), *_tables(), rotary_mode="interleave"),
    "rotary with tables outside [-1, 1]": lambda m: m.npu_rotary_mul(_bsnd(torch.float32), *(t * 3 for t in _tables()), rotary_mode="interleave"),
    "rotary with an unknown mode": lambda m: m.npu_rotary_mul(_bsnd(torch.float32), *_tables(), rotary_mode="interleaved"),
    "rotary interleave with B * N >= 1000": lambda m: m.npu_rotary_mul(_bsnd(torch.float32, b=2, n=500), *_tables(), rotary_mode="interleave"),
    "rotary on a 3-D input": lambda m: m.npu_rotary_mul(_bsnd(torch.float32)[0], *_tables(), rotary_mode="interleave"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_standin_rejects_calls_the_real_op_rejects(standin, case):
    with pytest.raises((TypeError, ValueError)):
        REJECTED[case](standin)


# -- the whole core ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    return {v: make_tiny(tmp_path_factory.mktemp(f"npu-{v}"), v) for v in ("base", "distilled")}


# One chunk each: its history (zeros in chunk 0) is in the sequence, so history tokens, their own
# modulation row and pooled RoPE take part; base runs CFG.
REQUESTS = {
    "distilled": GenerationRequest(prompt="a fox in snow", height=64, width=64, num_frames=33, pyramid_steps=(1, 1, 1), seed=3),
    "base": GenerationRequest(prompt="a fox in snow", negative_prompt="blurry", height=64, width=64, num_frames=33,
                              num_inference_steps=2, guidance_scale=5.0, seed=4),
}


def latents(core: Helios, request: GenerationRequest) -> torch.Tensor:
    gen = core.start(request, generator=torch.Generator().manual_seed(request.seed))
    return torch.cat([c.latents for c in core.stream(gen, decode=False)], dim=2)


@pytest.fixture(scope="module")
def torch_ops_latents(tiny_folders):
    """(variant, dtype) -> the core's latents on TorchOps, computed once per module."""
    cache = {}

    def get(variant: str, dtype: str = "float32") -> torch.Tensor:
        if (variant, dtype) not in cache:
            cache[variant, dtype] = latents(Helios.from_pretrained(tiny_folders[variant], dtype=dtype), REQUESTS[variant])
        return cache[variant, dtype]

    return get


@pytest.mark.parametrize("variant", ["distilled", "base"])
def test_core_on_npu_ops_produces_the_latents_of_torch_ops(standin, tiny_folders, torch_ops_latents, variant):
    reference = torch_ops_latents(variant)
    ours = latents(Helios.from_pretrained(tiny_folders[variant], ops=NpuOps()), REQUESTS[variant])
    assert ours.shape == reference.shape and ours.shape[2] == 9
    assert relative_error(ours, reference) <= 1e-5
    assert all(standin.calls[op] > 0 for op in ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul"))


def test_core_on_npu_ops_in_bf16_is_as_close_to_fp32_as_torch_ops_in_bf16(standin, tiny_folders, torch_ops_latents):
    """bf16 roundings differ between the two paths, so both are held against the fp32 run."""
    truth = torch_ops_latents("distilled")
    ours = latents(Helios.from_pretrained(tiny_folders["distilled"], dtype="bfloat16", ops=NpuOps()), REQUESTS["distilled"])
    assert relative_error(ours, truth) <= 1.25 * relative_error(torch_ops_latents("distilled", "bfloat16"), truth)


class BSNDToldBNSD(NpuOps):
    def attention(self, q, k, v):
        return self.torch_npu.npu_fusion_attention(q, k, v, q.shape[2], input_layout="BNSD", scale=q.shape[-1] ** -0.5)[0]


class RopeInModelDtype(NpuOps):
    def rope(self, x, cos, sin):
        r1, r2 = (t.repeat_interleave(2, -1).unsqueeze(2) for t in (cos, sin))
        return self.torch_npu.npu_rotary_mul(x, r1, r2, rotary_mode="interleave")


class GammaNotCast(NpuOps):
    def rms_norm(self, x, weight, eps):
        return self.torch_npu.npu_rms_norm(x, weight.float(), epsilon=eps)[0]


class HalfWidthTables(NpuOps):
    def rope(self, x, cos, sin):
        return self.torch_npu.npu_rotary_mul(x.float(), cos.float().unsqueeze(2), sin.float().unsqueeze(2), rotary_mode="interleave").to(x.dtype)


class HalfMode(NpuOps):
    def rope(self, x, cos, sin):
        r1, r2 = (t.float().repeat_interleave(2, -1).unsqueeze(2) for t in (cos, sin))
        return self.torch_npu.npu_rotary_mul(x.float(), r1, r2, rotary_mode="half").to(x.dtype)


class TablesTiledNotInterleaved(NpuOps):
    def rope(self, x, cos, sin):
        r1, r2 = (t.float().repeat(1, 1, 2).unsqueeze(2) for t in (cos, sin))
        return self.torch_npu.npu_rotary_mul(x.float(), r1, r2, rotary_mode="interleave").to(x.dtype)


@pytest.mark.parametrize("broken", [BSNDToldBNSD, RopeInModelDtype, GammaNotCast, HalfWidthTables])
def test_a_layout_or_dtype_mistake_in_the_ops_stops_the_core_run(standin, tiny_folders, broken):
    core = Helios.from_pretrained(tiny_folders["distilled"], dtype="bfloat16", ops=broken())
    with pytest.raises(ValueError):
        latents(core, REQUESTS["distilled"])


@pytest.mark.parametrize("broken", [HalfMode, TablesTiledNotInterleaved])
def test_a_wrong_rope_pairing_changes_the_core_latents(standin, tiny_folders, torch_ops_latents, broken):
    """Calls the kernel accepts but that rotate the wrong pairs: the parity test's 1e-5 catches them.

    The tiny random model depends weakly on position, so the change is small (~1e-3) yet far
    above the ~1e-6 of the right pairing.
    """
    reference = torch_ops_latents("distilled")
    ours = latents(Helios.from_pretrained(tiny_folders["distilled"], ops=broken()), REQUESTS["distilled"])
    assert relative_error(ours, reference) > 1e-4


# -- the import guard and device selection -----------------------------------------------------


def _one_line_error(fn, *args) -> str:
    with pytest.raises(CheckpointError) as exc:
        fn(*args)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_without_torch_npu_cpu_works_and_npu_fails_in_one_line(no_torch_npu):
    assert helios_npu.device.import_torch_npu() is None
    assert isinstance(default_ops("cpu"), TorchOps) and not isinstance(default_ops("cpu"), NpuOps)
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("npu", "npu:1"):
        assert _one_line_error(resolve_device, name) == f"device {name!r}: {MISSING_LINE}"
    assert _one_line_error(NpuOps) == f"NpuOps: {MISSING_LINE}"
    assert _one_line_error(default_ops, "npu") == f"NpuOps: {MISSING_LINE}"  # an engine on an NPU platform


def test_a_torch_npu_that_fails_to_load_counts_as_absent(broken_torch_npu):
    import importlib.util

    assert importlib.util.find_spec("torch_npu") is not None  # found, yet unusable
    assert helios_npu.device.import_torch_npu() is None
    assert _one_line_error(resolve_device, "npu:0") == f"device 'npu:0': {MISSING_LINE}"
    assert _one_line_error(default_ops, "npu") == f"NpuOps: {MISSING_LINE}"


def test_cli_device_npu_without_a_usable_torch_npu_is_one_line(broken_torch_npu, tiny_folders, capsys):
    argv = ["generate", "--model", str(tiny_folders["distilled"]), "--prompt", "x", "--device", "npu"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"helios: error: --device: device 'npu': {MISSING_LINE}"


def test_an_engine_platform_of_device_type_npu_gets_npu_ops_and_the_settings_once(standin):
    """The adapters pass their engine platform's device type (vllm-ascend's and SGLang's NPU
    platforms say "npu"); torch need not know "npu" for this (torch_npu teaches it on import)."""
    assert isinstance(default_ops("npu"), NpuOps)
    assert isinstance(default_ops("npu:0"), NpuOps)
    assert not isinstance(default_ops("cpu"), NpuOps)
    assert standin.npu.config.sets == [("allow_internal_format", False)]
    assert standin.npu.compile_modes == [False]


DEVICE_SCRIPT = """
import json, sys
from tests import npu_standin
npu_standin.install_with_backend(device_count=2)
import torch
from helios_backends.errors import CheckpointError
from helios_backends.loading import resolve_device
from helios_backends.ops import default_ops

def resolve(name):
    try:
        return str(resolve_device(name))
    except CheckpointError as exc:
        return "error: " + str(exc)

out = {name: resolve(name) for name in ("npu", "npu:1", "npu:2", "npu:x")}
out["ops"] = type(default_ops(resolve_device("npu:1"))).__name__
module = sys.modules["torch_npu"]
out["config"] = module.npu.config.sets
out["compile_modes"] = module.npu.compile_modes
sys.modules["torch_npu"] = npu_standin.build(device_count=0)
out["none visible"] = resolve("npu")
print(json.dumps(out))
"""


def test_npu_device_selection_with_torch_npu_loaded():
    """In a subprocess: naming privateuse1 "npu", as torch_npu's import does, cannot be undone."""
    run = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["npu"] == "npu:0" and out["npu:1"] == "npu:1"  # indexed: the current device is per thread
    assert out["npu:2"] == "error: device 'npu:2': only 2 NPU(s) present"
    assert out["npu:x"] == "error: unknown device 'npu:x' (accepted: cpu, cuda[:N], npu[:N])"
    assert out["none visible"] == "error: device 'npu': no Ascend NPU is visible"
    assert out["ops"] == "NpuOps"
    assert out["config"] == [["allow_internal_format", False]] and out["compile_modes"] == [False]
