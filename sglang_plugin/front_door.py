"""SGLang's front door for Helios: a request names no server path or URL and no option the core lacks.

SGLang's HTTP API acts on some request fields before any pipeline code sees them: `reference_url`
is fetched, `output_path` becomes the job's folder (created), `perf_dump_path` is written, the
frame-interpolation and upscaling model paths are opened after the run. Only an ASGI middleware
sees a request that early, so `register_front_door` asks SGLang's plugin hook registry (the
official `sglang.multimodal_gen.plugins` mechanism) to add `HeliosFrontDoor` to the app that
`create_app` returns; SGLang offers no other way to add one. The middleware answers 400 naming the
first refused field, in SGLang's own error shape (`{"detail": "field: why"}`).

Media reach Helios in the body only: base64 / data-URL `image` and `video`, or a multipart
`input_reference` / `video_reference` upload. SGLang saves such an upload as
`<uploads>/<request id>_<name>` and hands the path on as `image_path` / `video_path`;
`engine_upload` accepts exactly that file (a client cannot know the request id in advance) and
reads it, and refuses every other path.

`--quantization fp8` runs the core's FP8 block linears; engine options the core has no counterpart
for (other quantizations, cache backends) are refused at
start-up by `check_engine_options`, naming the flag; so are the LoRA flags the core's merge cannot
honour (`--lora-merge-mode dynamic`, `--lora-alpha`, `--lora-weight-name`, `--lora-target-modules`).
SGLang's video requests carry no LoRA (such fields are refused); its LoRA routes (/v1/set_lora,
/v1/merge_lora_weights, /v1/unmerge_lora_weights) are served by the core (helios_sglang.lora), and the
front door reads a route's body first (`lora_route_error`): a path outside the server's
--lora-path, a bad adapter file or an option the core lacks is a 400 naming it, and the worker is
never asked.

SGLang's DELETE only forgets a job's record (it has no abort for a running job), so the front
door also records each DELETE as an empty marker file, and the worker's denoising loop
(`check_not_deleted`) stops that job before its next step; the job then writes no video. A
DELETE that lands after the last step fails the job once SGLang has written its video
(`stop_if_deleted`, from the sampling params' final-output check), and SGLang removes the file. The
front door removes the deleted job's files (its saved uploads, its video if it had finished) and
answers with `deleted: true`, as the OpenAI SDK's VideoDeleteResponse reads it; the marker goes
when the job ends (or at once, when it had ended).

The OpenAI SDK sends a list in a multipart form as repeated `key[]` fields, and SGLang's form
reader keeps one value per key; the front door re-encodes such a form with each list as one
field of JSON text (`form_lists_as_json`), which SGLang decodes.
"""

from __future__ import annotations

import glob
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from helios_backends.errors import GenerationCancelled, RequestError
from helios_backends.fields import form_fields
from helios_backends.front_door import body_items, end_of_body, read_body, refused_field, replay, request_fields, rewritten_response
from helios_backends.loading import read_configs

from .lora import ALPHA_FROM_FILE, ALWAYS_MERGED, MERGE_MODES, check_adapters, check_strength, check_target, configured_paths, requested_adapters

NEVER_OPENED = "this server never opens a path named in a request"
NEVER_FETCHED = "this server never fetches a URL named in a request; send the image as an `input_reference` upload or base64 `image`"
NOT_OFFERED = "not offered by the Helios core; leave it unset"
NO_REQUEST_LORA = "SGLang's video requests carry no LoRA; switch the server's adapters with POST /v1/set_lora (paths under its --lora-path)"
LORA_ROUTES = frozenset({"/v1/set_lora", "/v1/merge_lora_weights", "/v1/unmerge_lora_weights"})

# Request field -> why it is refused (SGLang's /v1/videos and the routes sharing its request model).
REFUSED_REQUEST_FIELDS = {
    "output_path": "the output folder is the server's --output-path; " + NEVER_OPENED,
    "perf_dump_path": NEVER_OPENED,
    "frame_interpolation_model_path": NEVER_OPENED,
    "upscaling_model_path": NEVER_OPENED,
    "reference_url": NEVER_FETCHED,
    "image_url": NEVER_FETCHED,
    "video_url": "this server never fetches a URL named in a request; upload the video as `input_reference` or send base64 `video`",
    "image_path": "send the image as an `input_reference` upload or base64 `image`; " + NEVER_OPENED,
    "video_path": "send the video as an `input_reference` upload or base64 `video`; " + NEVER_OPENED,
    "input_reference": "give an upload (multipart) or a data: URL; " + NEVER_OPENED,
    "enable_teacache": "cache backends are " + NOT_OFFERED,
    "enable_cache_dit": "cache backends are " + NOT_OFFERED,
    "cache_dit_params": "cache backends are " + NOT_OFFERED,
    "attention_backend_override": NOT_OFFERED,
    "skip_softmax_params": NOT_OFFERED,
    "cfg_gate_step": NOT_OFFERED,
    "use_diffusion_decoder": NOT_OFFERED,
    "diffusers_kwargs": NOT_OFFERED,
    "guidance_scale_2": NOT_OFFERED,
    "true_cfg_scale": NOT_OFFERED,
    "flow_shift": "Helios' shift comes from its scheduler config; " + NOT_OFFERED,
    "enable_frame_interpolation": NOT_OFFERED,
    "frame_interpolation_exp": NOT_OFFERED,
    "frame_interpolation_scale": NOT_OFFERED,
    "enable_upscaling": NOT_OFFERED,
    "upscaling_scale": NOT_OFFERED,
    "profile": NOT_OFFERED,
    "num_profiled_timesteps": NOT_OFFERED,
    "profile_all_stages": NOT_OFFERED,
    "lora": NO_REQUEST_LORA,
    "lora_path": NO_REQUEST_LORA,
    "lora_nickname": NO_REQUEST_LORA,
}
UPLOAD_FIELDS = frozenset({"input_reference", "video_reference"})
# Each table: field -> (flag, default, why), refused when set to anything but the default or None.
OWN_WEIGHTS = "it runs the checkpoint's own weights"
# ServerArgs fields: start-up options the core has no counterpart for.
REFUSED_SERVER_ARGS = {
    "component_quantizations": ("--component-quantizations", {}, OWN_WEIGHTS),
    "transformer_weights_path": ("--transformer-weights-path", None, OWN_WEIGHTS),
    "cache_dit_config": ("--cache-dit-config", None, OWN_WEIGHTS),
}
# ServerArgs fields: SGLang LoRA options the core's merge cannot honour.
REFUSED_LORA_ARGS = {
    "lora_alpha": ("--lora-alpha", None, ALPHA_FROM_FILE),
    "lora_weight_name": ("--lora-weight-name", None, "give --lora-path the .safetensors file itself"),
    "lora_target_modules": ("--lora-target-modules", None, "the core merges every module the adapter holds"),
}
OWN_ATTENTION = "it runs its own attention kernels, and its own ring and Ulysses attention over SGLang's process groups"
# ServerArgs fields: SGLang's attention and compile choices, which the core makes itself
# (--attention-backend, which SGLang also sets by itself: _check_attention).
REFUSED_RUNTIME_ARGS = {
    "component_attention_backends": ("--component-attention-backends", {}, OWN_ATTENTION),
    "component_attention_backend_roles": ("--component-attention-backends", {}, OWN_ATTENTION),  # its role-qualified keys
    "enable_torch_compile": ("--enable-torch-compile", False, "on CUDA the core runs its own fused kernels and CUDA graphs"),
    "enable_breakable_cuda_graph": ("--enable-breakable-cuda-graph", False, "on CUDA the core captures its own CUDA graphs"),
}
# Pipeline-config fields: SGLang's VAE switches, for a decode the core does its own way.
OWN_DECODE = "it decodes each chunk as it is denoised, a latent frame per pass; --vae-precision sets the VAE's precision"
REFUSED_VAE_OPTIONS = {
    "vae_tiling": ("--vae-tiling", False, OWN_DECODE),
    "vae_slicing": ("--vae-slicing", False, OWN_DECODE),
    "vae_sp": ("--vae-sp", False, OWN_DECODE),
    "vae_decode_precision": ("--vae-decode-precision", None, OWN_DECODE),
}
MAX_CHECKED_BODY = 128 * 1024 * 1024


def _accepted_media(name: str, value: Any) -> bool:
    """An upload in an upload field, or a data: URL `input_reference` (media in the body)."""
    if name in UPLOAD_FIELDS and isinstance(value, UploadFile):
        return True
    return name == "input_reference" and isinstance(value, str) and value.startswith("data:")


def refused(items: list[tuple[str, Any]]) -> RequestError | None:
    """The first refused field of a request body's items, or None."""
    fields = [(n, v) for n, v in request_fields(items) if not _accepted_media(n, v)]
    for name, value in fields:
        if isinstance(value, dict) and name.split("[", 1)[0] == "input_reference":
            return RequestError(name, REFUSED_REQUEST_FIELDS["input_reference"])
    return refused_field(fields, REFUSED_REQUEST_FIELDS)


def bad_request(exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


def _is_job_id(text: Any) -> bool:
    """A name SGLang could have given a job (it is used as a file name, never as a path)."""
    return isinstance(text, str) and bool(text) and "/" not in text and not text.startswith(".")


def _deletion_records(port: int) -> Path:
    """The folder of a server's DELETE records (shared by its HTTP process and its workers)."""
    return Path(tempfile.gettempdir()) / f"helios-sglang-deleted-{port}"


def _deletion_marker(request_id: Any, port: int | None = None) -> Path | None:
    """The empty file that records a DELETE of a job; port None: this worker's server (None in the CLI)."""
    if not _is_job_id(request_id):
        return None
    if port is None:
        from sglang.multimodal_gen.runtime.server_args import get_global_server_args

        try:
            port = get_global_server_args().port
        except ValueError:  # no server in this process (the CLI)
            return None
    return _deletion_records(port) / request_id


def check_not_deleted(request_id: str | None) -> None:
    """In the worker, between denoising steps: stop a job whose DELETE the front door recorded."""
    marker = _deletion_marker(request_id)
    if marker is not None and marker.exists():
        raise GenerationCancelled(f"job {request_id} was deleted")


def stop_if_deleted(request_id: str | None) -> None:
    """In the HTTP process, after SGLang wrote a job's video: a job deleted since its last step
    fails, so SGLang removes the video it just wrote (the DELETE's record goes with it)."""
    marker = _deletion_marker(request_id)
    if marker is not None and marker.exists():
        marker.unlink(missing_ok=True)
        raise GenerationCancelled(f"job {request_id} was deleted while its video was written")


def forget_deleted(request_id: str | None, port: int | None = None) -> None:
    """Remove a job's DELETE record: the worker when the job ends, the front door when it had ended."""
    marker = _deletion_marker(request_id, port)
    if marker is not None:
        marker.unlink(missing_ok=True)


def remove_job_files(job: dict[str, Any]) -> None:
    """A deleted job's files: its uploads SGLang saved and its videos (named by the job id; a record
    only ever holds the server's own paths, since the front door refuses client-named ones)."""
    job_id = job.get("id")
    if not _is_job_id(job_id):
        return
    outputs = [job.get("file_path"), *(job.get("file_paths") or [])]
    files = [Path(p) for p in outputs if isinstance(p, str) and Path(p).name.startswith(job_id)]
    for file in [*files, *_upload_files(job_id)]:
        file.unlink(missing_ok=True)


def deleted_job_reply(send, port: int, job_id: str):
    """SGLang's DELETE answer as the OpenAI SDK's VideoDeleteResponse reads it (`deleted: true`),
    after removing the job's files; the job's DELETE record is kept only while the job can still run."""

    def rewrite(status: int, body: bytes) -> tuple[int, bytes]:
        try:
            job = json.loads(body)
        except ValueError:
            job = None
        if status != 200 or not isinstance(job, dict):
            forget_deleted(job_id, port)  # no such job: nothing to stop
            return status, body
        remove_job_files(job)
        if job.get("completed_at") is not None or job.get("error") is not None:
            forget_deleted(job_id, port)
        return status, json.dumps({**job, "object": "video.deleted", "deleted": True}).encode()

    return rewritten_response(send, rewrite)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _quoted(text: str) -> str:
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


async def form_lists_as_json(scope, messages: list[dict]) -> tuple[dict, list[dict]]:
    """A multipart body with every list sent as repeated (or `key[]`) text fields re-encoded as one
    field of JSON text, which SGLang's form reader decodes (it reads one value per key, the last).

    Lists are read as the core's `form_fields` reads them (a key sent both ways is refused);
    uploads go on unchanged.
    """
    from starlette.requests import Request

    form = await Request(scope, replay(messages, end_of_body)).form(max_part_size=MAX_CHECKED_BODY)
    try:
        texts = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
        uploads = [(name, value.filename or name, value.content_type, await value.read()) for name, value in form.multi_items() if not isinstance(value, str)]
    finally:
        await form.close()
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in form_fields(texts).items():
        text = json.dumps([_json_or_text(v) for v in value]) if isinstance(value, list) else value
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n{text}\r\n'.encode())
    for name, filename, content_type, data in uploads:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"; filename="{_quoted(filename)}"\r\n'
        head += f"Content-Type: {content_type or 'application/octet-stream'}\r\n\r\n"
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()), (b"content-length", str(len(body)).encode())]
    return {**scope, "headers": headers}, [{"type": "http.request", "body": body, "more_body": False}]


def has_form_lists(scope, items: list[tuple[str, Any]]) -> bool:
    """A multipart body that sends a text field more than once or as `key[]`."""
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").lower()
    names = [name for name, value in items if isinstance(value, str)]
    return content_type.startswith("multipart/form-data") and (len(set(names)) != len(names) or any(n.endswith("[]") for n in names))


class HeliosFrontDoor:
    """ASGI middleware: a POST naming a refused field is answered 400 before SGLang reads it, and a
    form's lists are handed on as SGLang reads lists; a DELETE of a job is recorded for the worker,
    which stops it at its next denoising step, and the job's files are removed."""

    def __init__(self, app, port: int):
        self.app = app
        self.port = port

    async def __call__(self, scope, receive, send) -> None:
        parts = scope.get("path", "").strip("/").split("/")
        if scope["type"] == "http" and scope["method"] == "DELETE" and len(parts) == 3 and parts[:2] == ["v1", "videos"]:
            marker = _deletion_marker(parts[2], self.port)
            if marker is not None:
                marker.parent.mkdir(exist_ok=True)
                marker.touch()
                send = deleted_job_reply(send, self.port, parts[2])
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        messages, complete = await read_body(receive, MAX_CHECKED_BODY)
        if not complete:
            message = f"request body: larger than {MAX_CHECKED_BODY // 2**20} MiB, the most this server reads"
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        items = await body_items(scope, messages, MAX_CHECKED_BODY)
        try:
            if items is None:
                error = None
            elif scope.get("path") in LORA_ROUTES:
                error = lora_route_error(scope["path"], dict(items))
            else:
                error = refused(items)
                if error is None and has_form_lists(scope, items):
                    scope, messages = await form_lists_as_json(scope, messages)
        except RequestError as exc:
            error = exc
        if error is not None:
            return await bad_request(error)(scope, receive, send)
        await self.app(scope, replay(messages, receive), send)


def lora_route_error(route: str, body: dict[str, Any]) -> RequestError | None:
    """What the front door answers a LoRA route's JSON body with: a RequestError naming the field, or
    None to pass it on (a body SGLang's route itself refuses passes too: it answers 422)."""
    from sglang.multimodal_gen.runtime.server_args import get_global_server_args

    try:
        server_args = get_global_server_args()
        if route != "/v1/set_lora":
            check_target(body.get("target", "all"))
            if route == "/v1/merge_lora_weights":
                check_strength(body.get("strength", 1.0))
            return None
        if "lora_nickname" not in body:
            return None
        adapters = requested_adapters(
            body["lora_nickname"], body.get("lora_path"), body.get("strength", 1.0), body.get("target", "all"),
            body.get("merge_mode"), body.get("lora_alpha"), configured_paths(server_args), loaded=None,
        )
        folder = Path(server_args.model_path)
        if folder.is_dir():
            check_adapters(adapters, read_configs(folder).transformer)
    except RequestError as exc:
        return exc
    except (TypeError, ValueError, AttributeError):  # not the route's types: its own validation answers
        return None
    return None


def add_front_door(app, server_args, *args, **kwargs) -> None:
    """AFTER hook on SGLang's `create_app`: put the front door in front of a Helios server's routes."""
    from .configs import HeliosCoreConfig

    if isinstance(server_args.pipeline_config, HeliosCoreConfig):
        shutil.rmtree(_deletion_records(server_args.port), ignore_errors=True)  # a former server's records
        app.add_middleware(HeliosFrontDoor, port=server_args.port)


def register_front_door() -> None:
    """Register `add_front_door` with SGLang's plugin hook registry (applied once per process)."""
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    HookRegistry.register("sglang.multimodal_gen.runtime.entrypoints.http_server.create_app", add_front_door, HookType.AFTER)


def core_quantization(server_args: Any) -> str | None:
    """`--quantization fp8` -> the core's FP8 block linears (helios_backends.fp8); any other method
    is refused at start-up, naming it."""
    value = getattr(server_args, "quantization", None)
    if value not in (None, "fp8"):
        raise ValueError(f"--quantization {value!r}: not supported by the Helios core; accepted: fp8 (FP8 block linears) or unset")
    return value


def check_engine_options(server_args: Any) -> None:
    """Refuse, at start-up, engine options the Helios core would otherwise ignore, naming the flag."""
    core_quantization(server_args)
    _refuse_set(server_args, {**REFUSED_SERVER_ARGS, **REFUSED_LORA_ARGS, **REFUSED_RUNTIME_ARGS})
    _refuse_set(getattr(server_args, "pipeline_config", None), REFUSED_VAE_OPTIONS)
    _check_attention(server_args)
    mode = getattr(server_args, "lora_merge_mode", "auto")
    if mode not in MERGE_MODES:
        raise ValueError(f"--lora-merge-mode {mode}: {ALWAYS_MERGED} (accepted: {', '.join(MERGE_MODES)})")


def _check_attention(server_args: Any) -> None:
    """Refuse a user's --attention-backend: the core runs its own attention kernels.

    Not a table entry: SGLang fills --attention-backend by itself in two cases (fa when ring attention is asked for,
    aiter on ROCm), so those values pass: they cannot be told from a user's.
    """
    from sglang.multimodal_gen.runtime.platforms import current_platform

    own = {None}
    if (getattr(server_args, "ring_degree", 1) or 1) > 1:
        own.add("fa")
    if current_platform.is_rocm():
        own.add("aiter")
    value = getattr(server_args, "attention_backend", None)
    if value not in own:
        raise ValueError(f"--attention-backend {value!r}: not supported by the Helios core ({OWN_ATTENTION}); leave it unset")


def _refuse_set(source: Any, refused: dict[str, tuple[str, Any, str]]) -> None:
    """Raise naming the first field of `refused` that `source` sets to anything but its default or None."""
    for name, (flag, default, why) in refused.items():
        value = getattr(source, name, default)
        if value not in (default, None):
            raise ValueError(f"{flag} {value!r}: not supported by the Helios core ({why}); leave it unset")


def _upload_dirs() -> list[Path]:
    """Where SGLang saves this server's uploads: --input-save-path, or its per-request sglang_* temp folders."""
    from sglang.multimodal_gen.runtime.server_args import get_global_server_args

    try:
        configured = get_global_server_args().input_save_path
    except ValueError:  # no server in this process (the CLI): no upload is accepted
        return []
    return [Path(configured if configured is not None else tempfile.gettempdir()).resolve()]


def _upload_files(request_id: str) -> list[Path]:
    """The files SGLang saved for a request's uploads: `<uploads>/<request id>_<name>`, in
    --input-save-path or in the request's own sglang_* temp folder."""
    pattern = glob.escape(request_id) + "_*"
    return [file.resolve() for uploads in _upload_dirs() for file in (*uploads.glob(pattern), *uploads.glob(f"sglang_*/{pattern}"))]


def _engine_upload(params: Any, name: str) -> Path | str | None:
    """`<name>_path` when it is SGLang's own upload for this request (its file) or a data: URL; None
    when unset. Any other path is refused: a client cannot name a file it does not know the request
    id of."""
    path = getattr(params, f"{name}_path", None)
    if isinstance(path, list) and len(path) == 1:
        path = path[0]
    if not path:
        return None
    if isinstance(path, str) and path.startswith("data:"):
        return path
    request_id = getattr(params, "request_id", None)
    if isinstance(path, str) and _is_job_id(request_id):
        file = Path(path).resolve()
        if file.is_file() and file in _upload_files(request_id):
            return file
    raise RequestError(f"{name}_path", REFUSED_REQUEST_FIELDS[f"{name}_path"])


def check_media_paths(params: Any) -> None:
    """Refuse an image/video path that is not this request's own upload (SamplingParams.__post_init__)."""
    for name in ("image", "video"):
        _engine_upload(params, name)


def engine_media(params: Any) -> dict[str, bytes | str]:
    """`image` / `video` from this request's own upload (file bytes) or data: URL, for the core request."""
    media = {}
    for name in ("image", "video"):
        source = _engine_upload(params, name)
        if source is not None:
            media[name] = source.read_bytes() if isinstance(source, Path) else source
    return media
