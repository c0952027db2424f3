"""Ascend NPU path (installed as `helios_npu`): device selection (`helios_npu.device`), torch_npu ops
(`helios_npu.ops.NpuOps`), and both as the core's `npu` backend (`helios_npu.backend`).

Importing this package never imports torch_npu; only choosing an npu device or building NpuOps does.
"""
