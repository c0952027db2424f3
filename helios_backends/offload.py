"""Low-VRAM execution: the text encoder kept on the host, transformer blocks streamed.

`layer` offload keeps the transformer blocks' weights in pinned host memory and a few
"slots" on the GPU. Before block i runs, its weights must have arrived in a slot; right after it
is scheduled, the copy of the block `slots` ahead into the slot block i used starts on a side
stream, so transfers overlap compute. Block weights become views of a slot's flat buffer, so the
model code is untouched. Everything outside the blocks (embedders, output layer) stays resident:
it is small. With `resident` > 0 the first blocks stay on the GPU for good and only the others
stream: each forward then copies fewer bytes (the 12 / 16 GB profiles trade memory for speed).

`model` offload keeps the text encoder on the host; it streams through the GPU one block at a time
to encode prompts (`TextEncoder.encode_streamed`), in `layer` offload too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OFFLOAD_MODES = ("none", "model", "layer")


@dataclass
class _Layout:
    """Where each parameter of a block lives inside its flat buffer (same for every block)."""

    names: list[str]
    shapes: list[torch.Size]
    dtypes: list[torch.dtype]
    offsets: list[int]  # in bytes
    nbytes: int


def _layout(block: nn.Module) -> _Layout:
    names, shapes, dtypes, offsets, offset = [], [], [], [], 0
    for name, p in block.named_parameters():
        offset = (offset + 15) // 16 * 16  # keep every view aligned for vectorised kernels
        names.append(name)
        shapes.append(p.shape)
        dtypes.append(p.dtype)
        offsets.append(offset)
        offset += p.numel() * p.element_size()
    return _Layout(names, shapes, dtypes, offsets, offset)


def _views(buffer: torch.Tensor, layout: _Layout) -> list[torch.Tensor]:
    out = []
    for shape, dtype, offset in zip(layout.shapes, layout.dtypes, layout.offsets):
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        out.append(buffer[offset : offset + n].view(dtype).view(shape))
    return out


def _point(block: nn.Module, layout: _Layout, tensors: list[torch.Tensor]) -> None:
    for name, tensor in zip(layout.names, tensors):
        module_name, _, attr = name.rpartition(".")
        module = block.get_submodule(module_name) if module_name else block
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)


def _on_meta(block: nn.Module) -> bool:
    return any(p.is_meta for p in block.parameters())


class LayerOffload:
    """Streams a ModuleList of identical blocks through `slots` device copies; the first
    `resident` blocks stay on the device. Blocks on the meta device get their places (pinned
    buffers, device memory) and no values: the loader fills them (loading.fill_weights)."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device, slots: int = 2, resident: int = 0):
        if resident < 0 or resident >= len(blocks):
            raise ValueError(f"resident blocks must be between 0 and {len(blocks) - 1} (one block at least streams), got {resident}")
        streamed = len(blocks) - resident
        if slots < 1 or slots > streamed:
            raise ValueError(f"offload slots must be between 1 and {streamed} (the streamed block count), got {slots}")
        self.blocks = blocks
        self.device = torch.device(device)
        self.pinned = list(range(resident))
        self.streamed = list(range(resident, len(blocks)))
        self.position = {index: n for n, index in enumerate(self.streamed)}  # a block's place in the streaming order
        for index in self.pinned:
            if _on_meta(blocks[index]):
                blocks[index].to_empty(device=self.device)
            else:
                blocks[index].to(self.device)
        self.layout = _layout(blocks[self.streamed[0]])
        if any(_layout(blocks[i]).shapes != self.layout.shapes for i in self.streamed):
            raise ValueError("layer offload needs blocks of identical shapes")
        pin = self.device.type == "cuda"
        self.host: dict[int, torch.Tensor] = {}
        for index in self.streamed:
            block = blocks[index]
            flat = torch.empty(self.layout.nbytes, dtype=torch.uint8, pin_memory=pin)
            if not _on_meta(block):
                for view, p in zip(_views(flat, self.layout), (p for _, p in block.named_parameters())):
                    view.copy_(p.detach())
            _point(block, self.layout, _views(flat, self.layout))
            self.host[index] = flat
        self.slots: list[torch.Tensor | None] = [None] * slots  # allocated on first use, freed by release()
        self.slot_of: dict[int, int] = {}  # block index -> slot holding it (arrived or in flight)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.arrived: dict[int, torch.cuda.Event] = {}
        self.freed: list[torch.cuda.Event | None] = [None] * slots
        self.history: list[tuple[str, int]] = []  # ("load" | "run", block) in order, for inspection
        self._hooks = [blocks[i].register_forward_pre_hook(self._before(i)) for i in self.streamed]
        self._hooks += [blocks[i].register_forward_hook(self._after(i)) for i in self.streamed]
        for i in self.streamed:
            # Text K/V are projected once per request outside the block's forward: load for that too.
            block = blocks[i]
            block.attn2.context_kv = self._resident(i, block, block.attn2.context_kv)

    @property
    def resident(self) -> list[int]:
        """The blocks on the device now: the pinned ones and those in a slot."""
        return self.pinned + sorted(self.slot_of)

    @property
    def device_bytes(self) -> int:
        """Bytes of block weights on the device: the slots allocated and the pinned blocks."""
        pinned = sum(p.numel() * p.element_size() for i in self.pinned for p in self.blocks[i].parameters())
        return pinned + sum(self.layout.nbytes for s in self.slots if s is not None)

    def _load(self, index: int, slot: int) -> None:
        """Copy block `index` into `slot`, after the slot's previous block has finished computing."""
        for block, s in list(self.slot_of.items()):
            if s == slot:
                del self.slot_of[block]
        self.slot_of[index] = slot
        self.history.append(("load", index))
        if self.slots[slot] is None:
            self.slots[slot] = torch.empty(self.layout.nbytes, dtype=torch.uint8, device=self.device)
        if self.copy_stream is None:
            self.slots[slot].copy_(self.host[index])
            return
        with torch.cuda.stream(self.copy_stream):
            if self.freed[slot] is not None:
                self.copy_stream.wait_event(self.freed[slot])
            self.slots[slot].copy_(self.host[index], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
            self.arrived[index] = event

    def _before(self, index: int):
        def hook(block, args):
            if index not in self.slot_of:
                self._load(index, self._free_slot(index))
            slot = self.slot_of[index]
            arrived = self.arrived.pop(index, None)  # none: resident since an earlier forward, its copy long waited for
            if arrived is not None:
                torch.cuda.current_stream(self.device).wait_event(arrived)
            _point(block, self.layout, _views(self.slots[slot], self.layout))
            self.history.append(("run", index))

        return hook

    def _after(self, index: int):
        def hook(block, args, output):
            slot = self.slot_of[index]
            if self.copy_stream is not None:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
                self.freed[slot] = event
            _point(block, self.layout, _views(self.host[index], self.layout))
            # The slot just freed takes the block `slots` ahead (wrapping to the next forward).
            ahead = self.streamed[(self.position[index] + len(self.slots)) % len(self.streamed)]
            if ahead not in self.slot_of:
                self._load(ahead, slot)

        return hook

    def _resident(self, index: int, block: nn.Module, fn):
        def run(*args):
            self._before(index)(block, args)
            out = fn(*args)
            self._after(index)(block, args, out)
            return out

        return run

    def _free_slot(self, index: int) -> int:
        used = set(self.slot_of.values())
        free = [s for s in range(len(self.slots)) if s not in used]
        if free:
            return free[0]
        # Evict the resident block needed last from here on.
        here = self.position[index]
        return self.slot_of[max(self.slot_of, key=lambda b: (self.position[b] - here) % len(self.streamed))]

    def release(self) -> None:
        """Drop every slot (between requests only the pinned blocks stay on the device)."""
        if self.copy_stream is not None:
            self.copy_stream.synchronize()
        self.slot_of.clear()
        self.arrived.clear()
        self.freed = [None] * len(self.slots)
        self.slots = [None] * len(self.slots)
