"""The CUDA-only fast path on a tiny checkpoint (run on a GPU: `scripts/test-gpu`; CI has none).

Names say GPU: these need a CUDA device and are not part of the CPU suites.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helios_backends.ops import TorchOps
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest

from ..conftest import HEIGHT, WIDTH, relative_error

if not torch.cuda.is_available():
    pytest.fail("tests/gpu needs a CUDA device (CI runs the CPU suites only)", pytrace=False)


def request(prompt: str, seed: int) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(1, 1, 1), seed=seed)


def latents(helios: Helios, req: GenerationRequest) -> torch.Tensor:
    return torch.cat([c.latents.float().cpu() for c in helios.stream(req, decode=False)], 2)


@pytest.fixture(scope="module")
def gpu_cores(checkpoints):
    folder, _ = checkpoints["distilled"]
    graphed = Helios.from_pretrained(folder, device="cuda", dtype="float32")
    eager = Helios.from_pretrained(folder, device="cuda", dtype="float32", cuda_graphs=False, ops=TorchOps())
    return graphed, eager


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_weights_loaded_onto_the_gpu_through_pinned_slices_equal_the_files(checkpoints, monkeypatch, dtype):
    """The fill's pinned buffer is made smaller than most tensors here, so each arrives in several
    slices: every parameter (fp32 modules cast on the way, q/k/v in their fused rows) equals the
    one loaded on the CPU straight from the mapped file."""
    from helios_backends import loading

    folder, _ = checkpoints["mid"]
    on_cpu = loading.load_transformer(folder, dtype, torch.device("cpu"))
    monkeypatch.setattr(loading, "STAGING_BYTES", 1000)
    on_gpu = loading.load_transformer(folder, dtype, torch.device("cuda"))
    expected = loading.checkpoint_parameters(on_cpu)
    for name, param in loading.checkpoint_parameters(on_gpu).items():
        assert param.dtype == expected[name].dtype and torch.equal(param.cpu(), expected[name]), name


def test_gpu_a_second_request_with_a_new_prompt_replays_the_graphs_of_the_first(gpu_cores):
    graphed, eager = gpu_cores
    latents(graphed, request("a fox", 0))
    captured = len(graphed.denoiser.graphs)
    assert captured == 3  # one per pyramid stage
    second = latents(graphed, request("a lake at dawn", 1))
    assert len(graphed.denoiser.graphs) == captured
    assert relative_error(second, latents(eager, request("a lake at dawn", 1))) <= 1e-4


@pytest.mark.parametrize("variant", ["base", "mid"])
def test_gpu_three_cfg_requests_in_a_row_through_the_graphs_each_equal_the_eager_path(checkpoints, variant):
    """CFG holds two live text contexts per request (cond, uncond); each later request must claim
    the freed graph text slots again and replay with its own prompts."""
    folder, _ = checkpoints[variant]
    graphed = Helios.from_pretrained(folder, device="cuda", dtype="float32")
    eager = Helios.from_pretrained(folder, device="cuda", dtype="float32", cuda_graphs=False, ops=TorchOps())
    steps = dict(num_inference_steps=3) if variant == "base" else dict(pyramid_steps=(2, 1, 1))
    prompts = [("a fox", "blurry"), ("a lake at dawn", "dark, noisy"), ("a city at night", "low quality")]
    for seed, (prompt, negative) in enumerate(prompts):
        req = GenerationRequest(
            prompt=prompt, negative_prompt=negative, height=HEIGHT, width=WIDTH, num_frames=33, seed=seed, **steps
        )
        assert graphed.plan(req).do_cfg
        got = latents(graphed, req)
        assert relative_error(got, latents(eager, req)) <= 1e-4, (variant, seed)
    assert len(graphed.denoiser.text) == 1 and len(next(iter(graphed.denoiser.text.values()))) == 2  # cond + uncond slots


@pytest.mark.parametrize("variant", ["distilled", "base"])
def test_gpu_after_warm_up_a_request_at_the_default_size_and_guidance_captures_no_new_graph(checkpoints, variant):
    """What a server's warm-up must cover so that its first request runs at the speed of the next."""
    folder, _ = checkpoints[variant]
    helios = Helios.from_pretrained(folder, device="cuda", dtype="float32")
    helios.warm_up()
    captured = len(helios.denoiser.graphs)
    assert captured > 0
    req = GenerationRequest(prompt="a fox in the snow", seed=1)  # every size, step and guidance field at its default
    helios.session(req, keep=None).run()
    assert len(helios.denoiser.graphs) == captured


def test_gpu_fused_kernels_and_cuda_graphs_equal_the_torch_reference_in_fp32(gpu_cores):
    graphed, eager = gpu_cores
    req = request("a red kite", 3)
    assert relative_error(latents(graphed, req), latents(eager, req)) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_gelu_in_the_gemm_epilogue_matches_gelu_after_the_linear(dtype):
    from helios_triton_kernels.ops import TritonOps

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 300, 256, device="cuda", generator=g).to(dtype)
    w = (torch.randn(512, 256, device="cuda", generator=g) / 16).to(dtype)
    b = torch.randn(512, device="cuda", generator=g).to(dtype)
    got, want = TritonOps().linear_gelu(x, w, b), TorchOps().linear_gelu(x, w, b)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, want, **tol)


def test_gpu_streamed_frames_arrive_in_order_and_equal_the_eager_reference(gpu_cores):
    graphed, eager = gpu_cores
    req = request("a harbour", 4)
    got = list(graphed.stream(req))
    want = list(eager.stream(req))
    assert [c.index for c in got] == [c.index for c in want]
    frames, reference = torch.cat([c.frames for c in got], 1), torch.cat([c.frames for c in want], 1)
    assert frames.dtype == torch.uint8 and frames.shape == reference.shape
    assert (frames.int() - reference.int()).abs().max().item() <= 1


def test_gpu_the_chunk_decoder_with_fused_norms_equals_diffusers_frame_by_frame_decode(monkeypatch):
    from diffusers import AutoencoderKLWan

    from helios_backends.tiny import TINY_VAE
    from helios_backends.wan_decoder import DecoderCache, WanChunkDecoder

    from ..test_vae import ours_from

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convs in fp32: the comparison is about the decoder
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE).cuda().eval()
    z = torch.randn(1, 16, 18, 8, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        want = vae.decode(z, return_dict=False)[0]
    decoder, cache = WanChunkDecoder(ours_from(vae), frames_per_pass=1), DecoderCache()
    got = torch.cat([decoder(z[:, :, :9], cache), decoder(z[:, :, 9:], cache)], 2)
    assert (got - want).abs().max().item() <= 1e-4, (got - want).abs().max().item()


@pytest.mark.parametrize(("variant", "options"), [("base", ["--steps", "3", "--negative-prompt", "blurry", "--guidance-scale", "5"]),
                                                   ("distilled", ["--pyramid-steps", "1", "1", "1"])])
def test_gpu_helios_generate_on_cuda_writes_the_eager_cores_video(checkpoints, tmp_path, variant, options):
    """The CLI as a user starts it, in a fresh process on the GPU (graphs, fused kernels, async decode, mp4)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from helios_backends.media_read import decode_mp4

    folder, _ = checkpoints[variant]
    out, saved = tmp_path / "out.mp4", tmp_path / "latents.safetensors"
    command = [sys.executable, "-c", "import sys; from helios_backends.cli import main; sys.exit(main())", "generate",
               "--model", str(folder), "--device", "cuda", "--dtype", "float32", "--prompt", "a red fox", "--height", str(HEIGHT), "--width", str(WIDTH),
               "--num-frames", "66", "--seed", "3", "--output", str(out), "--output-latents", str(saved), *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    eager = Helios.from_pretrained(folder, device="cuda", dtype="float32", cuda_graphs=False, ops=TorchOps())
    steps = dict(num_inference_steps=3, negative_prompt="blurry", guidance_scale=5.0) if variant == "base" else dict(pyramid_steps=(1, 1, 1))
    req = GenerationRequest(prompt="a red fox", height=HEIGHT, width=WIDTH, num_frames=66, seed=3, **steps)
    with eager.session(req, decode=False, keep="latents") as session:
        session.run()
        want = session.latents()
    assert relative_error(load_file(saved)["latents"], want) <= 1e-4
    assert decode_mp4(out).shape[0] == eager.plan(req).output_frames


def test_gpu_streamed_text_encoding_holds_one_block_on_the_device_and_equals_the_resident_encoding(checkpoints):
    from helios_backends.text import TextEncoder

    folder, _ = checkpoints["mid"]
    host = TextEncoder.load(folder, torch.float32, torch.device("cpu"))
    resident = TextEncoder.load(folder, torch.float32, torch.device("cuda"))
    block_bytes = sum(p.numel() * p.element_size() for p in host.encoder.encoder.block[0].parameters())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    streamed = host.encode_streamed(["a lake at dawn"], 64, torch.device("cuda"))
    torch.cuda.synchronize()
    assert all(p.device.type == "cpu" for p in host.encoder.parameters())
    states_bytes = streamed.numel() * streamed.element_size()
    assert torch.cuda.max_memory_allocated() - start <= 2 * block_bytes + 64 * states_bytes
    assert relative_error(streamed.cpu(), resident.encode(["a lake at dawn"], 64).cpu()) <= 1e-5


def test_gpu_model_offload_streams_the_text_encoder_from_the_host_and_equals_the_resident_model(checkpoints):
    """`--offload model`: the encoder's weights stay the very host tensors they were (none moved
    to the device whole, none copied home) and the latents are the resident model's."""
    folder, _ = checkpoints["distilled"]
    offloaded = Helios.from_pretrained(folder, device="cuda", dtype="float32", offload="model")
    before = {name: p.data_ptr() for name, p in offloaded.text_encoder.encoder.named_parameters()}
    got = latents(offloaded, request("a fox", 0))
    assert all(p.device.type == "cpu" for p in offloaded.text_encoder.encoder.parameters())
    assert {name: p.data_ptr() for name, p in offloaded.text_encoder.encoder.named_parameters()} == before
    resident = Helios.from_pretrained(folder, device="cuda", dtype="float32")
    assert relative_error(got, latents(resident, request("a fox", 0))) <= 1e-5


def test_gpu_fp8_blocks_run_on_fp8_tensor_cores_through_the_graphs_near_bf16_and_stream_under_layer_offload(checkpoints):
    """`--quantization fp8` on CUDA: torch._scaled_mm inside the captured graphs, within FP8's
    rounding of the bf16 run, and the same e4m3 blocks streamed by `--offload layer`."""
    from helios_backends.fp8 import Fp8Linear

    folder, _ = checkpoints["distilled"]
    bf16 = Helios.from_pretrained(folder, device="cuda", dtype="bfloat16")
    fp8 = Helios.from_pretrained(folder, device="cuda", dtype="bfloat16", quantization="fp8")
    streamed = Helios.from_pretrained(folder, device="cuda", dtype="bfloat16", quantization="fp8", offload="layer")
    assert isinstance(fp8.transformer.blocks[0].attn1.to_qkv, Fp8Linear)
    assert fp8.transformer.blocks[0].attn1.to_qkv.weight.device.type == "cuda"
    req = request("a fox", 0)
    want, got = latents(bf16, req), latents(fp8, req)
    assert len(fp8.denoiser.graphs) == 3
    assert torch.isfinite(got).all()
    error = relative_error(got, want)
    assert 1e-4 < error <= 0.2, error  # quantized (not the bf16 weights), and close to them
    assert relative_error(latents(streamed, req), got) <= 2e-2


@pytest.mark.parametrize("gelu", [False, True])
def test_gpu_the_fused_fp8_row_quantization_equals_the_torch_reference(gelu):
    from helios_triton_kernels.ops import TritonOps

    g = torch.Generator(device="cuda").manual_seed(0)
    magnitudes = torch.logspace(-3, 3, 300, device="cuda").view(-1, 1)
    x = (torch.randn(300, 5120, device="cuda", generator=g) * magnitudes).to(torch.bfloat16)
    got, got_scale = TritonOps().quantize_rows(x, gelu)
    want, want_scale = TorchOps().quantize_rows(x, gelu)
    assert got.dtype == torch.float8_e4m3fn and got_scale.shape == want_scale.shape == (300, 1)
    # the reference rounds GELU's output to bf16 before its amax; the kernel keeps fp32
    assert torch.allclose(got_scale, want_scale, rtol=1e-2 if gelu else 1e-6, atol=0)
    got, want = got.float(), want.float()
    assert ((got - want).abs() <= want.abs() / 8 + 2**-9).all()  # at most one e4m3 step apart
    assert (got == want).float().mean().item() >= (0.95 if gelu else 0.999)


def test_gpu_layer_offload_with_a_resident_block_streams_the_rest_and_equals_the_resident_model(checkpoints):
    """`--offload layer --offload-resident-blocks 1` on CUDA: block 0 lives on the device, block 1
    streams from pinned host memory through its slot on the copy stream, request after request."""
    folder, _ = checkpoints["distilled"]
    resident = Helios.from_pretrained(folder, device="cuda", dtype="float32", cuda_graphs=False)
    streamed = Helios.from_pretrained(folder, device="cuda", dtype="float32", offload="layer", offload_slots=1, offload_resident=1)
    blocks = streamed.transformer.blocks
    assert all(p.device.type == "cuda" for p in blocks[0].parameters())
    assert all(p.device.type == "cpu" and p.is_pinned() for p in blocks[1].parameters())
    for seed, prompt in enumerate(["a fox", "a lake at dawn"]):
        req = request(prompt, seed)
        assert relative_error(latents(streamed, req), latents(resident, req)) <= 1e-5
        assert streamed.resident_blocks == [0]  # the slot was released when the request closed
        assert all(p.device.type == "cpu" for p in blocks[1].parameters())


def test_gpu_helios_generate_on_cuda_runs_bfloat16_unless_told_otherwise(checkpoints, tmp_path):
    """A user on a GPU who gives no --dtype gets what the released weights are, bfloat16."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    folder, _ = checkpoints["distilled"]
    saved = tmp_path / "latents.safetensors"
    command = [sys.executable, "-c", "import sys; from helios_backends.cli import main; sys.exit(main())", "generate",
               "--model", str(folder), "--device", "cuda", "--prompt", "a red fox", "--height", str(HEIGHT), "--width", str(WIDTH),
               "--num-frames", "33", "--seed", "3", "--pyramid-steps", "1", "1", "1", "--output", str(tmp_path / "out.mp4"),
               "--output-latents", str(saved)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    got = load_file(saved)["latents"].float()
    req = request("a red fox", 3)
    bf16 = latents(Helios.from_pretrained(folder, device="cuda", dtype="bfloat16"), req)
    fp32 = latents(Helios.from_pretrained(folder, device="cuda", dtype="float32"), req)
    assert relative_error(got, bf16) * 10 < relative_error(got, fp32), (relative_error(got, bf16), relative_error(got, fp32))


FIRST_REQUEST = """
import json, sys, triton
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest
compiled = []
triton.knobs.runtime.jit_post_compile_hook = lambda *, fn, **_: compiled.append(fn.name)
helios = Helios.from_pretrained(sys.argv[1], device="cuda", dtype="bfloat16", vae_dtype="bfloat16",
                                quantization=None if sys.argv[2] == "none" else sys.argv[2])
loading = list(compiled)
compiled.clear()
request = GenerationRequest(prompt="a fox", height=int(sys.argv[3]), width=int(sys.argv[4]), num_frames=33, pyramid_steps=(1, 1, 1), seed=0)
for _ in helios.stream(request):
    pass
print(json.dumps({"loading": loading, "request": compiled}))
"""


@pytest.mark.parametrize("quantization", ["none", "fp8"])
def test_gpu_loading_compiles_the_kernels_so_a_fresh_processs_first_request_compiles_none(checkpoints, quantization):
    """helios_backends.warmup: from_pretrained runs the model once on tiny inputs while the weights
    load, so every Triton variant a request needs exists before it starts. A fresh process, as a
    user's; Triton's jit_post_compile_hook fires for each kernel compiled or read from its disk cache."""
    folder, _ = checkpoints["distilled"]
    out = subprocess.run([sys.executable, "-c", FIRST_REQUEST, str(folder), quantization, str(HEIGHT), str(WIDTH)],
                         capture_output=True, text=True, check=True, timeout=300)
    compiled = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"_modulated_layernorm", "_gated_residual", "_rmsnorm_rope", "_channel_rmsnorm_silu"} <= set(compiled["loading"])
    assert compiled["request"] == []
