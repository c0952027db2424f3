"""`sglang serve` as a new user meets it: the official `openai` SDK, and raw HTTP for every refused field
(tests/openai_conformance.py is the spec both engines run)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from helios_harness.launch import Http, Launched, free_port, wait_ready
from tests import openai_conformance as spec

from .conftest import START_TIMEOUT_S, engine_env

VARIANT = "distilled"  # no CFG: the fastest variant per step
SMALL = {"width": spec.WIDTH, "height": spec.HEIGHT, "num_frames": 33, "pyramid_steps": [1, 1, 1]}
# A form field's text is JSON-decoded by SGLang, so a list may also go as JSON text.
FORM_STEPS = {"pyramid_steps": "[1, 1, 1]"}
KNOWN_GAPS: dict[str, str] = {}


@pytest.fixture(scope="module")
def sglang(tiny_folders, shared_server):
    return shared_server.get(tiny_folders[VARIANT])


@pytest.fixture(scope="module")
def served(sglang):
    url = sglang.http.base_url
    with httpx.Client(base_url=url, timeout=120) as http:
        yield spec.Served(
            client=openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0),
            http=http,
            small=SMALL,
            long={**SMALL, "num_frames": 330},  # ten chunks
            failing={**SMALL, "timeout_s": 1e-9},
            failure_names="timeout_s",
            image_body={"image": base64.b64encode(spec.png(5)).decode()},
            long_chunks=10,  # the SDK sends SMALL's pyramid_steps beside an upload as repeated `pyramid_steps[]`
        )


@pytest.mark.parametrize("case", spec.sdk_cases(KNOWN_GAPS))
def test_the_openai_sdk_flow(served, case):
    case(served)


def json_body(**fields):
    return lambda http: http.post("/v1/videos", json={"prompt": "a fox", **SMALL, **fields})


def form_body(**fields):
    return lambda http: http.post("/v1/videos", data={"prompt": "a fox", **SMALL, **FORM_STEPS, **fields}, files={"unused": ("x", b"")})


REFUSED = {
    "output_path": (json_body(output_path="/tmp/helios-client-folder"), "output_path"),
    "output_path_in_a_form": (form_body(output_path="/tmp/helios-client-folder"), "output_path"),
    "output_path_in_extra_body": (json_body(extra_body={"output_path": "/tmp/helios-client-folder"}), "output_path"),
    "perf_dump_path": (json_body(perf_dump_path="/tmp/helios-perf.json"), "perf_dump_path"),
    "frame_interpolation_model_path": (json_body(frame_interpolation_model_path="/etc"), "frame_interpolation_model_path"),
    "upscaling_model_path": (form_body(upscaling_model_path="/etc"), "upscaling_model_path"),
    "input_reference_path": (json_body(input_reference="/etc/hostname"), "input_reference"),
    "input_reference_object": (json_body(input_reference={"image_url": "http://127.0.0.1:9/x.png"}), "input_reference"),
    "video_path": (json_body(video_path="/etc/hostname.mp4"), "video_path"),
    "video_url": (form_body(video_url="http://127.0.0.1:9/x.mp4"), "video_url"),
    "teacache": (json_body(enable_teacache=True), "enable_teacache"),
    "cache_dit": (json_body(extra_params={"enable_cache_dit": True}), "enable_cache_dit"),
    "lora": (json_body(lora_path="/tmp/lora.safetensors"), "lora_path"),
    "diffusers_kwargs": (json_body(diffusers_kwargs={"x": 1}), "diffusers_kwargs"),
    "frame_interpolation": (json_body(enable_frame_interpolation=True), "enable_frame_interpolation"),
}


@pytest.mark.parametrize(("send", "field_name"), REFUSED.values(), ids=REFUSED.keys())
def test_a_field_naming_a_path_url_or_missing_option_is_refused_400_naming_it(served, send, field_name):
    spec.refused_with_400_naming_the_field(served, send, field_name)


def test_refused_fields_leave_no_trace_the_folder_file_and_url_untouched(served, tmp_path):
    folder, dump = tmp_path / "client-folder", tmp_path / "perf.json"
    dump.write_text("keep")
    recorder = spec.RecordingServer()
    try:
        for fields in ({"output_path": str(folder)}, {"perf_dump_path": str(dump)}, {"reference_url": recorder.url("a.png")}):
            assert json_body(**fields)(served.http).status_code == 400
        assert form_body(reference_url=recorder.url("b.png"))(served.http).status_code == 400
    finally:
        recorder.close()
    assert not folder.exists() and dump.read_text() == "keep" and recorder.hits == []


def test_a_list_sent_both_as_key_and_as_key_brackets_is_refused_naming_it(served):
    response = served.http.post("/v1/videos", data={"prompt": "a fox", "pyramid_steps": "[1, 1, 1]", "pyramid_steps[]": ["1", "1", "1"]},
                                files={"unused": ("x", b"")})
    assert response.status_code == 400 and response.json()["detail"].startswith("pyramid_steps: is sent both as"), response.text


def job_files(sglang, job_id: str) -> list:
    """Every file the server holds for a job: saved uploads, videos, the front door's DELETE record."""
    port = sglang.http.base_url.rsplit(":", 1)[1]
    marker = Path(tempfile.gettempdir()) / f"helios-sglang-deleted-{port}" / job_id
    return [*sglang.workdir.glob(f"uploads/{job_id}_*"), *sglang.workdir.glob(f"outputs/{job_id}*"), *([marker] if marker.exists() else [])]


def test_deleting_a_job_removes_its_upload_video_and_delete_record(sglang, served):
    upload = {"input_reference": ("first.png", spec.png(5), "image/png")}
    done = served.client.videos.create_and_poll(prompt="a fox", **upload, extra_body=SMALL, poll_interval_ms=spec.POLL_MS)
    assert done.status == "completed" and len(job_files(sglang, done.id)) == 2, job_files(sglang, done.id)  # upload, video
    assert served.client.videos.delete(done.id).deleted is True
    assert job_files(sglang, done.id) == []

    running = served.client.videos.create(prompt="a long fox", **upload, extra_body={**SMALL, "num_frames": 330})
    while served.client.videos.retrieve(running.id).status != "in_progress":
        time.sleep(0.05)
    assert served.client.videos.delete(running.id).deleted is True
    assert served.client.videos.create_and_poll(prompt="next", extra_body=SMALL, poll_interval_ms=spec.POLL_MS).status == "completed"
    assert job_files(sglang, running.id) == []  # the worker stopped it: no video, and its record is gone


def test_start_up_refuses_engine_options_the_core_lacks_naming_the_flag(tiny_folders):
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    for settings, flag in (({"quantization": "modelslim"}, "--quantization 'modelslim'"), ({"cache_dit_config": "{}"}, "--cache-dit-config"),
                           ({"lora_path": "/tmp/lora", "lora_merge_mode": "dynamic"}, "--lora-merge-mode"),
                           ({"lora_path": "/tmp/lora", "lora_alpha": 8}, "--lora-alpha"),
                           ({"lora_path": "/tmp/lora", "lora_weight_name": "a.safetensors"}, "--lora-weight-name"),
                           ({"vae_tiling": True}, "--vae-tiling"), ({"vae_slicing": True}, "--vae-slicing"),
                           ({"vae_sp": True}, "--vae-sp"), ({"vae_decode_precision": "bf16"}, "--vae-decode-precision"),
                           ({"enable_torch_compile": True}, "--enable-torch-compile"),
                           ({"enable_breakable_cuda_graph": True}, "--enable-breakable-cuda-graph"),
                           ({"attention_backend": "torch_sdpa"}, "--attention-backend 'torch_sdpa'"),
                           ({"attention_backend": "fa"}, "--attention-backend 'fa'"),  # without ring attention: the user's
                           ({"component_attention_backends": {"transformer": "torch_sdpa"}}, "--component-attention-backends")):
        with pytest.raises(ValueError, match=flag):
            ServerArgs.from_kwargs(model_path=str(tiny_folders[VARIANT]), **settings)


def test_quantization_fp8_is_the_cores_fp8_and_no_flag_is_none(tiny_folders):
    """`sglang serve --quantization fp8` loads the core with quantization="fp8" (refused there without FP8 hardware)."""
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    from helios_sglang.front_door import core_quantization

    folder = str(tiny_folders[VARIANT])
    assert core_quantization(ServerArgs.from_kwargs(model_path=folder, quantization="fp8")) == "fp8"
    assert core_quantization(ServerArgs.from_kwargs(model_path=folder)) is None


def test_python_m_sglang_launch_server_serves_a_helios_folder(tiny_folders, fp32_config, tmp_path):
    """The design's own command: SGLang's LLM launcher hands a Helios folder to the diffusion server."""
    port = free_port()
    command = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_folders[VARIANT]),
               "--pipeline-config-path", str(fp32_config), "--host", "127.0.0.1", "--port", str(port),
               "--warmup-mode", "off", "--output-path", str(tmp_path / "outputs"),
               # the module's own server holds SGLang's default internal ports
               "--master-port", str(free_port()), "--scheduler-port", str(free_port())]
    env = {k: v for k, v in engine_env().items() if k != "SGLANG_EXTERNAL_MODEL_PACKAGE"}  # entry points alone
    process = Launched(command, tmp_path / "server.log", env=env, cwd=tmp_path, sample_memory=False)
    try:
        http = Http(f"http://127.0.0.1:{port}", timeout=120)
        wait_ready(process, http, timeout=START_TIMEOUT_S)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        video = client.videos.create_and_poll(prompt="a fox", extra_body=SMALL, poll_interval_ms=spec.POLL_MS)
        assert video.status == "completed", video
    finally:
        process.stop(grace=60)


def test_the_launch_route_leaves_every_other_model_to_the_llm_server(tmp_path):
    from helios_sglang.launch_route import route_helios_folder

    other = tmp_path / "llm"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for argv in (["--model-path", str(other)], ["--model-path", "Qwen/Qwen3-0.6B"], []):
        assert route_helios_folder(lambda a: ("llm server args", a), argv) == ("llm server args", argv)


def test_the_launch_route_is_an_installed_srt_plugin():
    script = "from importlib.metadata import entry_points; print([e.value for e in entry_points(group='sglang.srt.plugins')])"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=engine_env(), timeout=60)
    assert "helios_sglang.launch_route:register" in result.stdout, result.stderr
