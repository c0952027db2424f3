"""The plugin's registration with vLLM-Omni, in this process (no server)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from vllm_omni.diffusion.model_metadata import get_diffusion_model_metadata
from vllm_omni.diffusion.registry import DiffusionModelRegistry
from vllm_omni.model_extras.registry import get_extra_body_params

import helios_vllm
from helios_vllm.pipeline import HeliosCorePipeline
from helios_vllm.requests import HELIOS_EXTRA_PARAMS


def test_entry_points_name_the_plugin_and_the_cpu_platform():
    general = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    platforms = {ep.name: ep.value for ep in entry_points(group="vllm_omni.platform_plugins")}
    assert general["helios_backends"] == "helios_vllm:register"
    assert platforms["helios_backends_cpu"] == "helios_vllm.platform:activate"


@pytest.mark.parametrize("arch", helios_vllm.ARCHITECTURES)
def test_registering_twice_serves_both_archs_with_our_pipeline_as_video(arch):
    helios_vllm.register()
    helios_vllm.register()
    assert DiffusionModelRegistry._try_load_model_cls(arch) is HeliosCorePipeline
    assert get_diffusion_model_metadata(arch).final_output_type == "video"
    assert get_extra_body_params(arch) == HELIOS_EXTRA_PARAMS
    for option in ("task", "image", "video", "pyramid_steps", "use_zero_init", "zero_steps", "is_amplify_first_chunk",
                   "is_skip_first_chunk", "history_sizes", "prompt_schedule"):
        assert option in HELIOS_EXTRA_PARAMS


def test_cpu_platform_activates_only_on_vllms_cpu_platform():
    from vllm.platforms import current_platform

    from helios_vllm.platform import QUALNAME, activate

    assert activate() == (QUALNAME if current_platform.is_cpu() else None)


def test_the_pre_0_2_middleware_name_is_the_same_class_with_a_warning(tmp_path):
    """`--middleware vllm_plugin.http.HeliosRequestCheck` (the name before helios_vllm), imported as
    vLLM does (import_module + getattr), from a directory outside the checkout: the installed alias
    gives the one class."""
    script = (
        "import importlib\n"
        "import helios_vllm.http\n"
        "print(getattr(importlib.import_module('vllm_plugin.http'), 'HeliosRequestCheck') is helios_vllm.http.HeliosRequestCheck)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
    assert "FutureWarning: the package 'vllm_plugin' is now named 'helios_vllm'" in done.stderr


def test_the_vae_precision_comes_from_additional_config_helios_and_unknown_settings_are_refused(tmp_path):
    from vllm_omni.diffusion.data import OmniDiffusionConfig

    from helios_backends.tiny import make_tiny
    from helios_vllm.pipeline import core_settings

    folder = str(make_tiny(tmp_path / "tiny", "distilled"))

    def settings(additional):
        return core_settings(OmniDiffusionConfig.from_kwargs(model=folder, additional_config=additional))

    assert settings({}) == {"vae_dtype": "float32"}
    assert settings({"helios": {"vae_dtype": "bfloat16"}, "other_component": 1}) == {"vae_dtype": "bfloat16"}
    with pytest.raises(ValueError, match=r"helios\.vae_precision: not a Helios setting"):
        settings({"helios": {"vae_precision": "bf16"}})
    with pytest.raises(ValueError, match=r"helios\.vae_dtype: 'fp8' is not one of"):
        settings({"helios": {"vae_dtype": "fp8"}})
