"""Ascend NPU path: device selection (`npu.device`) and torch_npu ops (`npu.ops.NpuOps`).

Importing this package never imports torch_npu; only choosing an npu device or building NpuOps does.
"""
