"""SGLang's sampling params reach the core through its one request schema: its fields, its errors."""

from __future__ import annotations

import dataclasses

import pytest

from helios_backends.errors import RequestError
from helios_backends.request import REQUEST_FIELDS, GenerationRequest


def test_a_string_false_is_false_and_maybe_is_refused_with_the_cores_own_error():
    from helios_sglang.configs import HeliosCoreSamplingParams
    from helios_sglang.request_mapping import to_generation_request

    params = HeliosCoreSamplingParams(prompt="a fox", is_amplify_first_chunk="false", pyramid_steps="[1, 1, 1]")
    request = to_generation_request(params, explicit_fields=set())
    assert request.is_amplify_first_chunk is False and request.pyramid_steps == (1, 1, 1)
    with pytest.raises(RequestError) as served:
        to_generation_request(HeliosCoreSamplingParams(prompt="a fox", is_amplify_first_chunk="maybe"), explicit_fields=set())
    with pytest.raises(RequestError) as core:
        GenerationRequest.from_fields({"is_amplify_first_chunk": "maybe"})
    assert served.value.field == "is_amplify_first_chunk" and str(served.value) == str(core.value)


def test_the_sampling_params_carry_every_request_field_and_declare_the_helios_ones_as_http_fields():
    from helios_sglang.configs import HeliosCoreSamplingParams
    from helios_sglang.request_mapping import SHARED_FIELDS

    assert set(REQUEST_FIELDS) <= {f.name for f in dataclasses.fields(HeliosCoreSamplingParams)}
    assert HeliosCoreSamplingParams.video_request_extra_fields() == set(REQUEST_FIELDS) - SHARED_FIELDS - {"prompt", "seed"}


def test_a_job_deleted_after_its_last_step_fails_the_final_output_check_so_sglang_removes_its_video(monkeypatch):
    """The DELETE that lands between the worker's last step and SGLang writing the mp4: SGLang's
    final-output check (run in the HTTP process, after the write) refuses the job, and SGLang
    deletes the files of a refused job; the DELETE's record is consumed."""
    import sglang.multimodal_gen.runtime.server_args.server_args as server_args_module
    from sglang.multimodal_gen.runtime.server_args import ServerArgs

    from helios_backends.errors import GenerationCancelled
    from helios_sglang.configs import HeliosCoreSamplingParams
    from helios_sglang.front_door import _deletion_marker

    args = ServerArgs.__new__(ServerArgs)
    args.port = 39217  # the HTTP process's args; only the port names the DELETE records' folder
    monkeypatch.setattr(server_args_module, "_global_server_args", args)
    params = HeliosCoreSamplingParams(prompt="a fox")
    job = dataclasses.make_dataclass("Req", ["request_id"])("video_3f11a248")
    assert params.validate_video_final_outputs(["/tmp/video_3f11a248.mp4"], job) == {}  # not deleted: accepted

    marker = _deletion_marker(job.request_id)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    with pytest.raises(GenerationCancelled, match="deleted while its video was written"):
        params.validate_video_final_outputs(["/tmp/video_3f11a248.mp4"], job)
    assert not marker.exists()
