"""Machine probing reads the system; CPU-less NUMA nodes are found in a fake sysfs tree."""

from __future__ import annotations

from pathlib import Path

from llmsys.core.machine import cpuless_numa_nodes, numa_nodes, o_direct_supported


def _node(root: Path, node_id: int, cpus: str, mem_kb: int) -> None:
    d = root / f"node{node_id}"
    d.mkdir(parents=True)
    (d / "cpulist").write_text(cpus + "\n")
    (d / "meminfo").write_text(f"Node {node_id} MemTotal:       {mem_kb} kB\n")


def test_cpuless_node_is_reported_as_cxl(tmp_path: Path) -> None:
    # node0 has CPUs; node1 has memory and no CPUs (a CXL expander); node10 sorts numerically
    _node(tmp_path, 0, "0-7", 1024)
    _node(tmp_path, 1, "", 2048)
    _node(tmp_path, 10, "8-15", 1024)
    nodes = numa_nodes(tmp_path)
    assert [n.node_id for n in nodes] == [0, 1, 10]
    assert nodes[1].memory_bytes == 2048 * 1024
    assert cpuless_numa_nodes(nodes) == [1]


def test_no_numa_tree_means_no_nodes(tmp_path: Path) -> None:
    assert numa_nodes(tmp_path / "absent") == []


def test_o_direct_probe_leaves_no_files(tmp_path: Path) -> None:
    result = o_direct_supported(tmp_path)
    assert isinstance(result, bool)
    assert list(tmp_path.iterdir()) == []
