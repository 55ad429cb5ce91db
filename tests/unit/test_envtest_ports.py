"""The test stack's ports: not from the kernel's ephemeral range (where connections' source ports and
other workers' "port 0" picks come from: a server found its port taken, and a health check once reached
another worker's operator), and one block per test worker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hyperv_operator.envtest import controlplane
from hyperv_operator.envtest.controlplane import PORT_BLOCK_SIZE, PORT_BLOCKS_START, free_port


def test_ports_are_below_the_ephemeral_range_unique_and_in_the_workers_own_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    low = PORT_BLOCKS_START + 2 * PORT_BLOCK_SIZE
    assert all(low <= p < low + PORT_BLOCK_SIZE for p in ports)
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert max(ports) < ephemeral_low
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert all(low - PORT_BLOCK_SIZE <= free_port() < low for _ in range(5))  # another worker, another block


def test_a_port_with_a_listener_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw4")
    free_port()  # sets this block's next candidate
    low = PORT_BLOCKS_START + 4 * PORT_BLOCK_SIZE
    candidate = controlplane._next_port[4]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", low + candidate))
        listener.listen()
        assert free_port() == low + (candidate + 1) % PORT_BLOCK_SIZE
