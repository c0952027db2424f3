"""LoRA adapters: merged into our weights, they give what diffusers' `load_lora_weights` gives.

Adapters are made with peft on the tiny diffusers transformer and saved with diffusers'
`save_lora_weights`, as upstream Helios' training does; diffusers' pipeline with the adapter
loaded (`load_lora_weights` + `set_adapters`) is the oracle.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from helios_backends.cli import main
from helios_backends.errors import CheckpointError
from helios_backends.pipeline import Helios
from helios_backends.request import GenerationRequest

from .conftest import HEIGHT, WIDTH, relative_error
from .test_sampler_parity import core_latents, diffusers_latents

TOL = 1e-5
PROMPT = "a red fox running through snow"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out", "time_proj", "patch_embedding"]


def make_adapter(pipe, folder, seed: int, rank: int, alpha: float, targets=TARGETS):
    """A random peft LoRA on the pipeline's transformer, saved as upstream's training saves it."""
    from diffusers import HeliosPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    model = copy.deepcopy(pipe.transformer)
    model.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    HeliosPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(model), transformer_lora_adapter_metadata=config.to_dict()
    )
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def adapters(checkpoints, tmp_path_factory):
    """name -> safetensors file: 'a' (rank 4, alpha 6) and 'b' (rank 2, alpha 2, attention only)."""
    _, pipe = checkpoints["distilled"]
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": make_adapter(pipe, root / "a", seed=1, rank=4, alpha=6.0),
        "b": make_adapter(pipe, root / "b", seed=2, rank=2, alpha=2.0, targets=["to_q", "to_v", "to_out.0"]),
    }


@pytest.fixture(scope="module")
def own_cores(checkpoints):
    """Cores of our own: these tests merge adapters into them, the shared `cores` stay untouched."""
    return {v: Helios.from_pretrained(checkpoints[v][0]) for v in ("base", "distilled")}


def diffusers_with(pipe, loras: list[tuple[str, float]]):
    """A copy of the shared pipeline with the adapters loaded (unloading leaves peft state behind)."""
    pipe = copy.deepcopy(pipe)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(path, adapter_name=name)
    pipe.set_adapters(names, [scale for _, scale in loras])
    return pipe


def weights(core: Helios) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in core.transformer.state_dict().items()}


def distilled_request(seed: int) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=33, pyramid_steps=(1, 1, 1), seed=seed)


def distilled_reference(pipe, seed: int) -> torch.Tensor:
    return diffusers_latents(pipe, seed, prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=33,
                             pyramid_num_inference_steps_list=[1, 1, 1], guidance_scale=1.0, is_amplify_first_chunk=True)


def test_base_with_a_lora_matches_diffusers_load_lora_weights(checkpoints, own_cores, adapters):
    _, pipe = checkpoints["base"]
    core = own_cores["base"]
    core.set_loras([(adapters["a"], 0.7)])
    try:
        req = GenerationRequest(prompt=PROMPT, negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_frames=33,
                                num_inference_steps=2, guidance_scale=5.0, seed=3)
        ours = core_latents(core, req)
        ref = diffusers_latents(diffusers_with(pipe, [(adapters["a"], 0.7)]), 3, prompt=PROMPT, negative_prompt="blurry", height=HEIGHT, width=WIDTH,
                                num_frames=33, num_inference_steps=2, guidance_scale=5.0)
    finally:
        core.set_loras([])
    assert relative_error(ours, ref) <= TOL


def test_distilled_with_a_lora_matches_diffusers_load_lora_weights(checkpoints, own_cores, adapters):
    _, pipe = checkpoints["distilled"]
    core = own_cores["distilled"]
    core.set_loras([(adapters["a"], 0.7)])
    try:
        ours = core_latents(core, distilled_request(4))
    finally:
        core.set_loras([])
    assert relative_error(ours, distilled_reference(diffusers_with(pipe, [(adapters["a"], 0.7)]), 4)) <= TOL
    assert relative_error(ours, distilled_reference(pipe, 4)) > 1e-2  # the adapter does change the video


def test_two_loras_at_different_scales_match_diffusers_and_its_fuse_lora(checkpoints, own_cores, adapters):
    """Latents against diffusers' adapters, weights against its own merge (fuse_lora, as upstream's merge tool does)."""
    _, pipe = checkpoints["distilled"]
    core = own_cores["distilled"]
    loras = [(adapters["a"], 0.7), (adapters["b"], -1.5)]
    core.set_loras(loras)
    try:
        ours, merged_weights = core_latents(core, distilled_request(5)), weights(core)
    finally:
        core.set_loras([])
    reference = diffusers_with(pipe, loras)
    assert relative_error(ours, distilled_reference(reference, 5)) <= TOL
    reference.fuse_lora(components=["transformer"], lora_scale=1.0)
    reference.unload_lora_weights()
    theirs = reference.transformer.state_dict()
    assert set(theirs) == set(merged_weights)
    assert all(torch.allclose(merged_weights[k], theirs[k], rtol=0, atol=1e-5) for k in theirs)


def test_clearing_the_loras_restores_the_base_weights_and_latents_bit_exactly(own_cores, adapters):
    core = own_cores["distilled"]
    base_weights, base_latents = weights(core), core_latents(core, distilled_request(5))
    core.set_loras([(adapters["a"], 1.3), (adapters["b"], 0.5)])
    assert any(not torch.equal(v, base_weights[k]) for k, v in weights(core).items())
    core.set_loras([])
    assert all(torch.equal(v, base_weights[k]) for k, v in weights(core).items())
    assert torch.equal(core_latents(core, distilled_request(5)), base_latents)


def test_switching_adapters_equals_merging_the_new_one_into_the_base(checkpoints, own_cores, adapters):
    core = own_cores["distilled"]
    fresh = Helios.from_pretrained(checkpoints["distilled"][0])
    fresh.set_loras([(adapters["b"], 0.9)])
    core.set_loras([(adapters["a"], 0.7)])
    core.set_loras([(adapters["b"], 0.9)])
    try:
        want = weights(fresh)
        assert all(torch.equal(v, want[k]) for k, v in weights(core).items())
        assert core.loras.active == ((str(adapters["b"]), 0.9),)
    finally:
        core.set_loras([])


def test_fused_projections_take_the_same_merge_as_the_unfused_ones(checkpoints, adapters):
    unfused = Helios.from_pretrained(checkpoints["distilled"][0])
    fused = Helios.from_pretrained(checkpoints["distilled"][0])
    fused.transformer.fuse_projections()  # as on CUDA: to_qkv / to_kv hold the LoRA targets' rows
    for core in (unfused, fused):
        core.set_loras([(adapters["a"], 0.8)])
    assert relative_error(core_latents(fused, distilled_request(6)), core_latents(unfused, distilled_request(6))) <= 1e-6
    block = fused.transformer.blocks[0]
    qkv = torch.cat([unfused.transformer.blocks[0].attn1.to_q.weight, unfused.transformer.blocks[0].attn1.to_k.weight,
                     unfused.transformer.blocks[0].attn1.to_v.weight])
    assert torch.equal(block.attn1.to_qkv.weight, qkv)
    fused.set_loras([])
    base = Helios.from_pretrained(checkpoints["distilled"][0])
    base.transformer.fuse_projections()
    assert all(torch.equal(v, base.transformer.state_dict()[k]) for k, v in fused.transformer.state_dict().items())


def test_upstream_training_checkpoint_folder_merges_its_lora_and_whole_tensors(checkpoints, own_cores, adapters, tmp_path):
    """Upstream saves pytorch_lora_weights.safetensors plus transformer_partial.pth (whole tensors of
    modules trained in full, and its GAN heads); the whole tensors replace the base ones."""
    core = own_cores["distilled"]
    folder = adapters["a"].parent
    patch = torch.randn(core.transformer.patch_short.weight.shape, generator=torch.Generator().manual_seed(9))
    torch.save({"patch_short.weight": patch, "gan_heads.0.weight": torch.ones(3)}, folder / "transformer_partial.pth")
    try:
        core.set_loras([(folder, 0.7)])
        upstream = weights(core)
        core.set_loras([(adapters["a"], 0.7)])
    finally:
        (folder / "transformer_partial.pth").unlink()
    lora_only = weights(core)
    core.set_loras([])
    assert torch.equal(upstream["patch_short.weight"], patch)
    assert all(torch.equal(v, lora_only[k]) for k, v in upstream.items() if k != "patch_short.weight")


def test_non_diffusers_wan_keys_merge_like_diffusers_reads_them(checkpoints, own_cores, adapters, tmp_path):
    """`diffusion_model.` keys with lora_down/lora_up/alpha (the original Wan layout) equal the diffusers-keyed adapter."""
    names = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o"}
    core = own_cores["distilled"]
    state = load_file(adapters["b"])
    rank, alpha = 2, 3.0
    wan, diffusers_keyed = {}, {}
    for key, value in state.items():
        module, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        block, _, leaf = module.partition(".attn1.")
        if f"attn1.{leaf}" not in names:
            continue
        wan_module = f"diffusion_model.{block}.{names['attn1.' + leaf]}"
        wan[f"{wan_module}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = value
        wan[f"{wan_module}.alpha"] = torch.tensor(alpha)
        diffusers_keyed[key] = value * (alpha / rank) if part.startswith("B") else value
    save_file(wan, tmp_path / "wan.safetensors")
    save_file(diffusers_keyed, tmp_path / "diffusers.safetensors")
    core.set_loras([(tmp_path / "wan.safetensors", 0.6)])
    got = weights(core)
    core.set_loras([(tmp_path / "diffusers.safetensors", 0.6)])
    want = weights(core)
    core.set_loras([])
    assert all(torch.allclose(v, want[k], rtol=0, atol=1e-6) for k, v in got.items())
    assert any(not torch.equal(v, weights(core)[k]) for k, v in got.items())


def bad_adapter(adapters, tmp_path, edit) -> str:
    state = load_file(adapters["b"])
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    return str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("transformer.blocks.0.attn1.to_q.lora_B.weight"), "blocks.0.attn1.to_q.lora_B.weight: missing"),
        (lambda s: s.update({"transformer.blocks.0.attn1.to_x.lora_A.weight": torch.zeros(2, 32),
                             "transformer.blocks.0.attn1.to_x.lora_B.weight": torch.zeros(32, 2)}),
         "blocks.0.attn1.to_x.lora_A.weight: targets no Linear/Conv3d"),
        (lambda s: s.update({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 7)}),
         "blocks.0.attn1.to_q.lora_A.weight: shape [2, 7]"),
        (lambda s: s.update({"transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(3, 2)}),
         "blocks.0.attn1.to_q.lora_B.weight: shape [3, 2]"),
        (lambda s: s.update({"transformer.blocks.0.attn1.to_q.magnitude": torch.zeros(3)}),
         "blocks.0.attn1.to_q.magnitude: not a LoRA key"),
    ],
    ids=["missing-pair", "unknown-target", "down-shape", "up-shape", "unknown-key"],
)
def test_a_bad_adapter_is_refused_by_name_and_key_and_the_weights_stay_as_they_were(own_cores, adapters, tmp_path, edit, message):
    core = own_cores["distilled"]
    core.set_loras([(adapters["a"], 0.5)])
    before = weights(core)
    path = bad_adapter(adapters, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        core.set_loras([(path, 1.0)])
    after = weights(core)
    core.set_loras([])
    assert str(err.value).startswith(f"LoRA {path}: ") and message in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in after.items())  # the server goes on with what it had


def test_cli_lora_is_repeatable_and_changes_the_video(checkpoints, adapters, tmp_path):
    runs = {}
    for name, extra in {"none": [], "two": ["--lora", f"{adapters['a']}:0.5", "--lora", str(adapters["b"])]}.items():
        latents = tmp_path / f"{name}.safetensors"
        code = main(["generate", "--model", str(checkpoints["distilled"][0]), "--prompt", PROMPT, "--height", str(HEIGHT), "--width", str(WIDTH),
                     "--num-frames", "33", "--pyramid-steps", "1", "1", "1", "--output", str(tmp_path / f"{name}.mp4"),
                     "--output-latents", str(latents), *extra])
        assert code == 0
        runs[name] = load_file(latents)["latents"]
    assert relative_error(runs["two"], runs["none"]) > 1e-2


@pytest.mark.parametrize(
    ("value", "message"),
    [("a.safetensors:big", "the scale after ':' must be a number"), ("missing.safetensors:0.5", "missing.safetensors: no such file")],
)
def test_cli_bad_lora_value_is_a_one_line_error(checkpoints, tmp_path, capsys, value, message):
    code = main(["generate", "--model", str(checkpoints["distilled"][0]), "--prompt", PROMPT, "--output", str(tmp_path / "x.mp4"), "--lora", value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("helios: error: --lora: ") and message in err and err.count("\n") == 1
