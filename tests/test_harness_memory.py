"""The benches' device-memory bookkeeping (helios_harness.launch): what nvidia-smi's rows count for a
process tree, on CPU (the rows are nvidia-smi's csv as `--query-compute-apps=pid,used_memory
--format=csv,noheader,nounits` prints it)."""

from __future__ import annotations

from helios_harness.launch import tree_gpu_bytes


def test_each_tree_process_is_counted_on_its_own_and_other_gpu_users_are_left_out():
    rows = ["4100, 38112", "4242, 1010", "999, 20000", "4300, [N/A]", "not a row"]
    names = {4000: "sglang", 4100: "python3", 4242: "sglang::scheduler", 4300: "python3"}
    used = tree_gpu_bytes(rows, names)
    assert used == {"python3 4100": 38112 * 2**20, "sglang::scheduler 4242": 1010 * 2**20}


def test_a_tree_nvidia_smi_does_not_list_counts_nothing():
    assert tree_gpu_bytes(["999, 20000"], {4000: "python3"}) == {}
    assert tree_gpu_bytes([], {4000: "python3"}) == {}
