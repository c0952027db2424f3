"""The plugin's registration and start-up checks, on SGLang's own registry and ServerArgs."""

from __future__ import annotations

import subprocess
import sys

from .conftest import engine_env


def test_folders_of_any_name_resolve_to_the_core_pipelines_by_model_index(tiny_folders):
    from sglang.multimodal_gen.registry import get_model_info

    expected = {"base": "HeliosCorePipeline", "mid": "HeliosCorePyramidPipeline", "distilled": "HeliosCorePyramidPipeline"}
    for variant, folder in tiny_folders.items():
        info = get_model_info(str(folder), backend="sglang")
        assert info.pipeline_cls.__name__ == expected[variant]
        assert info.sampling_param_cls.__name__ == "HeliosCoreSamplingParams"
        assert info.pipeline_config_cls.__name__ == "HeliosCoreConfig"


def test_hub_names_resolve_to_the_core_pipelines():
    from sglang.multimodal_gen.registry import get_non_diffusers_pipeline_name

    assert get_non_diffusers_pipeline_name("BestWishYsh/Helios-Base") == "HeliosPipeline"
    assert get_non_diffusers_pipeline_name("BestWishYsh/Helios-Distilled") == "HeliosPyramidPipeline"


def test_entry_point_registers_the_plugin_without_the_package_variable(tiny_folders):
    """`sglang serve` loads the sglang.multimodal_gen.plugins entry points in every process."""
    env = engine_env()
    del env["SGLANG_EXTERNAL_MODEL_PACKAGE"]
    script = (
        "import sys\n"
        "from sglang.multimodal_gen.runtime.platforms.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.multimodal_gen.registry import get_model_info\n"
        "print(get_model_info(sys.argv[1], backend='sglang').pipeline_cls.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tiny_folders["mid"])], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "helios_sglang.pipeline"


def test_the_pre_0_2_package_variable_still_registers_the_plugin_and_warns(tiny_folders, tmp_path):
    """SGLANG_EXTERNAL_MODEL_PACKAGE=sglang_plugin (the name before helios_sglang), entry points off,
    from a directory outside the checkout: the installed alias registers the one helios_sglang."""
    env = {**engine_env(), "SGLANG_EXTERNAL_MODEL_PACKAGE": "sglang_plugin", "SGLANG_PLUGINS": "none"}
    script = (
        "import sys\n"
        "from sglang.multimodal_gen.registry import get_model_info\n"
        "print(get_model_info(sys.argv[1], backend='sglang').pipeline_cls.__module__)\n"
        "import helios_sglang, sglang_plugin.registration\n"
        "print(sglang_plugin.registration is helios_sglang.registration)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tiny_folders["mid"])], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-2:] == ["helios_sglang.pipeline", "True"]
    assert "FutureWarning: the package 'sglang_plugin' is now named 'helios_sglang'" in result.stderr
