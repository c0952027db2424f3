"""`Helios`: the loaded components of one checkpoint and the entry points every backend calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .backends import device_backend
from .config import PipelineConfig, SchedulerConfig, TransformerConfig
from .loading import build_transformer, check_folder, fill_weights, load_scheduler_config, load_transformer, resolve_device, resolve_dtype
from .errors import CheckpointError
from .fp8 import check_quantization, fp8_quantized, quantize_blocks
from .lora import LoraSet
from .offload import OFFLOAD_MODES, LayerOffload
from .ops import default_ops
from .parallel import ParallelGroups, SequenceParallelOps
from .probes import NO_PROBE, Probe, ProbedDenoiser
from .request import GenerationRequest, Plan, plan
from .sampler import Chunk, Generation, rand, randn
from .session import ChunkOutput, Keep, PendingFrames, Session
from .text import TextEncoder
from .transformer import HeliosTransformer
from .vae import WanVAE, to_uint8_frames
from .warmup import compile_decoder_kernels, compile_transformer_kernels


class Helios:
    def __init__(
        self,
        transformer: HeliosTransformer,
        pipeline: PipelineConfig,
        scheduler: SchedulerConfig,
        text_encoder: TextEncoder | None,
        vae: WanVAE | None,
        parallel: ParallelGroups | None = None,
        cuda_graphs: bool = False,
        offload: str = "none",
        layers: LayerOffload | None = None,
        probe: Probe = NO_PROBE,
    ):
        """offload: the mode of from_pretrained; `layers` streams the transformer's blocks (offload
        "layer" only). Graphs are not captured over streamed blocks."""
        if offload not in OFFLOAD_MODES:
            raise CheckpointError(f"offload must be one of {list(OFFLOAD_MODES)}, got {offload!r}")
        if (offload == "layer") != (layers is not None):
            raise ValueError(f"offload {offload!r}: a LayerOffload of the blocks is given exactly with offload 'layer'")
        self.parallel = parallel
        self.offload = offload
        self.layers = layers
        self.transformer = transformer
        self.loras = LoraSet(transformer)
        # The sampler calls the denoiser; on CUDA it replays captured graphs of the transformer.
        self.denoiser = transformer
        if cuda_graphs and layers is None and transformer.device.type == "cuda" and parallel is None:
            from .graphs import GraphedTransformer

            self.denoiser = GraphedTransformer(transformer)
        self.probe = probe  # helios_backends.probes: sections a caller observes (the benchmarks' timers)
        if probe is not NO_PROBE:
            self.denoiser = ProbedDenoiser(self.denoiser, probe)
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.vae = vae

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        vae_dtype: str | torch.dtype = "float32",
        ops=None,
        parallel: ParallelGroups | None = None,
        cuda_graphs: bool = True,
        offload: str = "none",
        offload_slots: int = 2,
        offload_resident: int = 0,
        vae_frames_per_call: int | None = 1,
        probe: Probe = NO_PROBE,
        quantization: str | None = None,
    ) -> "Helios":
        """Load a Helios folder. The transformer runs in `dtype` (its fp32 modules stay fp32).

        parallel: this rank's process groups (an engine's, or ParallelGroups.from_world); with a
        sequence-parallel group the transformer's ops shard tokens and make attention global.
        cuda_graphs: on CUDA, replay the transformer from captured graphs.
        probe: entered around each prompt encoding, transformer call and chunk decode
        (helios_backends.probes; the benchmarks time these sections through it).
        offload: "model" keeps the text encoder on the host, streaming it through the device block
        by block for each prompt; "layer" also streams the transformer blocks from host memory
        through `offload_slots` device copies, keeping the first `offload_resident` blocks on the
        device (fewer bytes copied per step).
        vae_frames_per_call: latent frames per pass of the VAE decoder's upsampled layers.
        1 (default): the smallest decode peak and the same frames in every offload mode; None: the
        whole chunk in one pass, a few times the memory for a little speed (bench/RESULTS.md).
        Latents never depend on it; decoded frames are bit-identical only at equal values
        (within 1/255 else).
        quantization: "fp8" runs the blocks' linear layers on FP8 tensor cores (helios_backends.fp8;
        a bfloat16 transformer on a GPU with FP8, compute capability 8.9+); None keeps `dtype`.
        """
        if offload not in OFFLOAD_MODES:
            raise CheckpointError(f"offload must be one of {list(OFFLOAD_MODES)}, got {offload!r}")
        folder = Path(folder)
        pipeline = check_folder(folder)
        device = resolve_device(device)
        dtype, vae_dtype = resolve_dtype(dtype), resolve_dtype(vae_dtype)
        check_quantization(quantization, device, dtype)
        scheduler = load_scheduler_config(folder)
        ops = ops or default_ops(device)
        kernel_ops = ops  # the warm-up's: unsharded, so no collective runs on the loading thread
        if parallel is not None and parallel.sp is not None:
            ops = SequenceParallelOps(ops, parallel)
        text_device = torch.device("cpu") if offload != "none" else device
        # The text encoder and the VAE load on a second thread while this one fills the
        # transformer: its copies release the GIL, so their reads (and the tokenizer's parse)
        # run meanwhile instead of after it.
        # Where kernels compile on first use, a third thread compiles the transformer's from the
        # start (on tiny inputs: no weights needed) and the VAE's thread the decoder's once it loads.
        backend = device_backend(device.type)
        warm = backend is not None and backend.compiles_on_first_use
        with ThreadPoolExecutor(2, thread_name_prefix="helios-load") as pool:
            if warm:
                config = TransformerConfig.from_json(folder / "transformer" / "config.json")
                kernels = pool.submit(compile_transformer_kernels, config, dtype, kernel_ops, device, quantization)
            others = pool.submit(_load_text_and_vae, folder, dtype, text_device, vae_dtype, device, vae_frames_per_call, warm)
            transformer, layers = _place_transformer(folder, dtype, device, ops, offload, offload_slots, offload_resident, quantization)
            text_encoder, vae = others.result()
            if warm:
                kernels.result()
        if parallel is not None:
            parallel.config.validate(transformer.config.num_attention_heads)
        return cls(transformer, pipeline, scheduler, text_encoder, vae, parallel, cuda_graphs, offload, layers, probe)

    def set_loras(self, adapters: Sequence[tuple[str | Path, float]]) -> None:
        """Merge exactly these (path, scale) LoRA adapters into the weights; [] restores the base.

        Call between requests: a running request keeps the text keys/values it projected.
        A bad adapter raises CheckpointError naming it and leaves the weights as they were.
        """
        if adapters and fp8_quantized(self.transformer):
            raise CheckpointError("LoRA with quantization fp8: adapters merge into dense weights, which fp8 replaced; "
                                  "load without quantization to use LoRA")
        self.loras.apply(adapters)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def variant(self) -> str:
        return self.pipeline.variant

    def plan(self, request: GenerationRequest) -> Plan:
        """The request's plan; with sequence-parallel groups, sizes the ranks cannot split are refused here."""
        sp_degree = 1 if self.parallel is None else self.parallel.config.sp_degree
        return plan(request, self.pipeline, self.scheduler, self.transformer.config.patch_size, sp_degree)

    def make_generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(seed)

    # -- preparation ------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], max_length: int) -> torch.Tensor:
        """(N, max_length, D) text encoder states. With offload, the encoder lives on the host and
        streams through the device one block at a time: the device never holds its 11 GB, and no
        weight is copied home. (Moving the whole encoder there and back per prompt made "model"
        slower than "layer", which streams the transformer too, and left the encoder's 11 GB in the
        allocator's cache: bench/RESULTS.md, ninth session.)"""
        if self.text_encoder is None:
            raise RuntimeError("this Helios instance has no text encoder; pass prompt embeddings")
        with self.probe.section("text", prompts):
            if self.offload == "none":
                return self.text_encoder.encode(prompts, max_length)
            return self.text_encoder.encode_streamed(prompts, max_length, self.device)

    @property
    def resident_blocks(self) -> list[int]:
        """The offloaded transformer blocks with a copy on the device ([] without layer offload)."""
        return [] if self.layers is None else self.layers.resident

    def warm_up(self) -> None:
        """Compile and capture, before a server takes its first request, what a request at the
        variant's default size and guidance needs: the Triton kernels, the CUDA graphs of every
        pyramid stage (with CFG where the default guidance uses it), the VAE's decode of a first
        and a following chunk. Two chunks are generated and dropped.
        Off CUDA nothing is compiled or captured, so there is nothing to warm."""
        if self.device.type != "cuda":
            return
        window = self.plan(GenerationRequest(prompt="warm-up")).video_frames_per_chunk
        self.session(GenerationRequest(prompt="warm-up", num_frames=2 * window, seed=0), keep=None).run()

    def release(self) -> None:
        """Free what a finished request left on the device (the offloaded blocks' slots); a
        Session calls it when it closes."""
        if self.layers is not None:
            self.layers.release()

    def _condition_image(self, p: Plan, generator):
        """I2V: the image latent (prefix) and a fake last-history latent, both lightly noised."""
        image = p.image.unsqueeze(2)
        image_latents = self.vae.encode(image, generator).float()
        window = p.video_frames_per_chunk
        fake = self.vae.encode(image.repeat(1, 1, window, 1, 1), generator)[:, :, -1:].float()
        if p.add_noise_to_image_latents:
            image_latents = self._noised(image_latents, p.image_noise_sigma, generator)
            fake = self._noised(fake, p.video_noise_sigma, generator)
        return image_latents, fake

    def _noised(self, latents: torch.Tensor, sigma_range: tuple[float, float], generator, per_frame: bool = False):
        lo, hi = sigma_range
        n = latents.shape[2] if per_frame else 1
        sigma = rand(n, generator, self.device) * (hi - lo) + lo
        if per_frame:
            sigma = sigma.view(1, 1, n, 1, 1)
        return sigma * randn(latents.shape, generator, self.device) + (1 - sigma) * latents

    def _condition_video(self, p: Plan, generator):
        """V2V: the first frame's latent (prefix) and the video's latents, encoded in end-aligned chunks."""
        video = p.video
        window = p.video_frames_per_chunk
        n_chunks = video.shape[2] // window
        start = video.shape[2] - n_chunks * window
        first = self.vae.encode(video[:, :, 0:1], generator).float()
        chunks = [self.vae.encode(video[:, :, start + i * window : start + (i + 1) * window], generator) for i in range(n_chunks)]
        latents = torch.cat(chunks, dim=2).float()
        if p.add_noise_to_video_latents:
            first = self._noised(first, p.image_noise_sigma, generator)
            latents = torch.cat(
                [
                    self._noised(latents[:, :, i * p.chunk_frames : (i + 1) * p.chunk_frames], p.video_noise_sigma, generator, per_frame=True)
                    for i in range(latents.shape[2] // p.chunk_frames)
                ],
                dim=2,
            )
        return first, latents

    def start(
        self,
        request: GenerationRequest | Plan,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> Generation:
        """Validate and prepare a request: encode prompts and conditioning, draw its first random numbers.

        The generator defaults to one seeded with the request's seed on the model's device.
        """
        p = request if isinstance(request, Plan) else self.plan(request)
        if generator is None:
            generator = self.make_generator(p.seed)
        with torch.no_grad():
            text = prompt_embeds if prompt_embeds is not None else self.encode_prompts(list(p.prompts), p.max_sequence_length)
            negative = None
            if p.do_cfg:
                negative = negative_prompt_embeds
                if negative is None:
                    negative = self.encode_prompts([p.negative_prompt] * (1 if p.prompt_schedule else len(p.prompts)), p.max_sequence_length)
            image_latents = history = prefix = None
            if p.task == "i2v":
                image_latents, history = self._condition_image(p, generator)
                prefix = history
            elif p.task == "v2v":
                image_latents, history = self._condition_video(p, generator)
                prefix = history
        return Generation(
            p, self.denoiser, self.pipeline, self.scheduler, text, negative, generator, image_latents, history, prefix, self.parallel
        )

    def session(
        self,
        request: GenerationRequest | Plan,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        decode: bool = True,
        keep: Keep | None = None,
    ) -> Session:
        """Prepare a request (see `start`) as a Session; what preparing held is released if it fails."""
        try:
            gen = self.start(request, generator, prompt_embeds, negative_prompt_embeds)
        except BaseException:
            self.release()
            raise
        return Session(self, gen, decode, keep)

    # -- decoding ---------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, generation: Generation, chunk: Chunk) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 CPU frames of a chunk; the last chunk is trimmed to the video's length."""
        return self.decode_async(generation, chunk).result()

    @torch.no_grad()
    def decode_async(self, generation: Generation, chunk: Chunk) -> "PendingFrames":
        """Queue a chunk's decode; on CUDA the frames land in pinned host memory without blocking.

        The decode runs on the denoising stream, ahead of the next chunk's steps. A side stream
        overlapping the two was measured on an H200 (bench/RESULTS.md): same throughput, as both
        compete for the SMs, and a later first chunk.
        """
        keep = generation.frames_to_keep(chunk.index)
        with self.probe.section("vae", chunk.latents):
            video = self.vae.decode(chunk.latents)
        frames = to_uint8_frames(video[:, :, :keep])
        if self.device.type != "cuda":
            return PendingFrames(frames.cpu(), None)
        host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(frames, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingFrames(host, done)

    def stream(
        self,
        request: GenerationRequest | Generation,
        decode: bool = True,
        on_step: Callable[[Session], None] | None = None,
    ) -> Iterator[ChunkOutput]:
        """The chunks of a Session of `request` (or of a prepared Generation); see Session.chunks."""
        session = Session(self, request, decode) if isinstance(request, Generation) else self.session(request, decode=decode)
        return session.chunks(on_step)


def _place_transformer(folder: Path, dtype: torch.dtype, device: torch.device, ops, offload: str, offload_slots: int,
                       offload_resident: int, quantization: str | None) -> tuple[HeliosTransformer, LayerOffload | None]:
    """The transformer where `offload` puts it, weights filled (and FP8-quantized if asked)."""
    if offload != "layer":
        transformer = load_transformer(folder, dtype, device, ops)
        if quantization == "fp8":
            quantize_blocks(transformer.blocks, ops)
        return transformer, None
    # Everything but the blocks on the device, the streamed blocks in pinned host buffers, then
    # each weight copied once from the file into its place. FP8 quantizes on the host first: the
    # e4m3 blocks are what streams, so LayerOffload takes them once quantized.
    transformer = build_transformer(folder, dtype, ops, fuse=True)
    for name, module in transformer.named_children():
        if name != "blocks":
            module.to_empty(device=device)
    if quantization == "fp8":
        transformer.blocks.to_empty(device=torch.device("cpu"))
        fill_weights(transformer, folder)
        quantize_blocks(transformer.blocks, ops)
        return transformer, LayerOffload(transformer.blocks, device, offload_slots, offload_resident)
    layers = LayerOffload(transformer.blocks, device, offload_slots, offload_resident)
    fill_weights(transformer, folder)
    return transformer, layers


def _load_text_and_vae(folder: Path, dtype: torch.dtype, text_device: torch.device, vae_dtype: torch.dtype, device: torch.device,
                       vae_frames_per_call: int | None, warm: bool) -> tuple[TextEncoder, WanVAE]:
    """warm: compile the decoder's kernels once the VAE is loaded (helios_backends.warmup)."""
    vae = WanVAE.load(folder, vae_dtype, device, frames_per_call=vae_frames_per_call)
    if warm:
        compile_decoder_kernels(vae)
    return TextEncoder.load(folder, dtype, text_device), vae
