"""Loading a diffusers-layout folder, and the errors that name what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helios_backends.config import PipelineConfig
from helios_backends.errors import CheckpointError
from helios_backends.loading import INDEX_NAME, load_transformer, resolve_device, resolve_dtype, weight_files
from helios_backends.pipeline import Helios


@pytest.fixture()
def folder(checkpoints, tmp_path):
    """A private copy of the diffusers-saved Mid folder, free to break."""
    src, _ = checkpoints["mid"]
    dst = tmp_path / "helios-mid"
    shutil.copytree(src, dst)
    return dst


def shard_of(folder, tensor: str):
    index = json.loads((folder / "transformer" / INDEX_NAME).read_text())
    return folder / "transformer" / index["weight_map"][tensor]


def rewrite_shard(path, edit):
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_sharded_checkpoint_loads_with_its_index(checkpoints):
    folder, pipe = checkpoints["mid"]
    files = weight_files(folder / "transformer")
    assert len(set(files.values())) > 1  # really sharded
    model = load_transformer(folder, torch.float32, torch.device("cpu"))
    ref = pipe.transformer.state_dict()
    assert all(torch.equal(p, ref[n]) for n, p in model.named_parameters())


def test_variant_comes_from_model_index_flags(checkpoints):
    variants = {v: PipelineConfig.from_json(f / "model_index.json").variant for v, (f, _) in checkpoints.items()}
    assert variants == {"base": "base", "mid": "mid", "distilled": "distilled"}


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        Helios.from_pretrained(tmp_path / "nope")


def test_missing_component_is_named(folder):
    shutil.rmtree(folder / "vae")
    with pytest.raises(CheckpointError, match="missing component folder vae/"):
        Helios.from_pretrained(folder)


def test_unknown_pipeline_class_is_named(folder):
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "WanPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="unknown pipeline class 'WanPipeline'"):
        Helios.from_pretrained(folder)


def test_missing_tensor_is_named(folder):
    name = "blocks.1.attn2.to_k.weight"
    rewrite_shard(shard_of(folder, name), lambda t: t.pop(name))
    index_path = folder / "transformer" / INDEX_NAME
    index = json.loads(index_path.read_text())
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensors \['blocks.1.attn2.to_k.weight'\]"):
        load_transformer(folder, torch.float32, torch.device("cpu"))


def test_unexpected_tensor_is_named(folder):
    name = "blocks.0.attn1.to_q.weight"
    shard = shard_of(folder, name)
    rewrite_shard(shard, lambda t: t.__setitem__("blocks.0.extra.weight", torch.zeros(2)))
    index_path = folder / "transformer" / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"]["blocks.0.extra.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['blocks.0.extra.weight'\]"):
        load_transformer(folder, torch.float32, torch.device("cpu"))


def test_misshaped_tensor_is_named_with_both_shapes(folder):
    name = "proj_out.weight"
    rewrite_shard(shard_of(folder, name), lambda t: t.__setitem__(name, torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match=r"proj_out.weight has shape \[3, 3\], the config needs \[64, 32\]"):
        load_transformer(folder, torch.float32, torch.device("cpu"))


def test_a_tensor_the_index_places_in_a_shard_that_lacks_it_is_named(folder):
    name = "proj_out.weight"
    rewrite_shard(shard_of(folder, name), lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"no tensor {name}, which the index places in it"):
        load_transformer(folder, torch.float32, torch.device("cpu"))


def test_the_fused_cuda_layout_loads_the_checkpoints_q_k_v_into_its_rows(checkpoints):
    """On CUDA q/k/v are fused before the weights arrive: each lands in its rows of to_qkv / to_kv."""
    from helios_backends.loading import build_transformer, fill_weights
    from helios_backends.ops import TorchOps

    folder, pipe = checkpoints["mid"]
    model = build_transformer(folder, torch.float32, TorchOps(), fuse=True)
    model.to_empty(device=torch.device("cpu"))
    fill_weights(model, folder)
    ref = pipe.transformer.state_dict()
    attn1, attn2 = model.blocks[1].attn1, model.blocks[1].attn2
    assert torch.equal(attn1.to_qkv.weight, torch.cat([ref[f"blocks.1.attn1.to_{p}.weight"] for p in "qkv"]))
    assert torch.equal(attn2.to_kv.bias, torch.cat([ref[f"blocks.1.attn2.to_{p}.bias"] for p in "kv"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_tensor_read_in_slices_through_a_small_buffer_is_the_files_tensor(tmp_path, dtype):
    """A GPU's tensors arrive through a pinned buffer smaller than most of them, slice by slice:
    together the slices are the tensor, element for element, whatever the boundaries."""
    from helios_backends.loading import _MappedWeights

    tensors = {"a": torch.randn(7, 13).to(dtype), "b": torch.randn(5).to(dtype), "c": torch.randn(3, 3).to(dtype)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    weights = _MappedWeights(tmp_path / "w.safetensors")
    for nbytes in (8, 12, 64, 4096):  # even and uneven counts of elements per slice; one slice for all
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        for name, tensor in tensors.items():
            flat = torch.full((tensor.numel(),), float("nan"), dtype=dtype)
            for first, part in weights.slices(name, buffer):
                flat[first : first + part.numel()] = part
            assert torch.equal(flat.view(tensor.shape), tensor), (name, nbytes)
    weights.close()


def test_missing_shard_is_named(folder):
    shard = shard_of(folder, "proj_out.weight")
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing shard: {shard.name}"):
        load_transformer(folder, torch.float32, torch.device("cpu"))


def test_unknown_config_key_is_named(folder):
    path = folder / "transformer" / "config.json"
    config = json.loads(path.read_text())
    config["num_experts"] = 8
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown config keys \['num_experts'\]"):
        load_transformer(folder, torch.float32, torch.device("cpu"))


def test_unknown_scheduler_class_is_named(folder):
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["_class_name"] = "DDIMScheduler"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown scheduler class 'DDIMScheduler'"):
        Helios.from_pretrained(folder)


def test_unsupported_dtype_is_named():
    with pytest.raises(CheckpointError, match=r"unsupported dtype 'int8' \(accepted: \['float32', 'bfloat16', 'float16'\]\)"):
        resolve_dtype("int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_absent_cuda_device_is_named():
    with pytest.raises(CheckpointError, match="no CUDA GPU is available"):
        resolve_device("cuda")


def test_unknown_device_is_named():
    with pytest.raises(CheckpointError, match="unsupported device 'meta'"):
        resolve_device("meta")
