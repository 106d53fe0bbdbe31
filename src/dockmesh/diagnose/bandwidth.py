"""Bandwidth between two containers: a TCP stream between their namespaces, driven from the
host, or iperf3 (the host's binary) run in each namespace when asked.

The listening socket is made in the destination's namespace and bound to its address on the
shared network, the sending socket in the source's: the bytes take the containers' real path
(veth, bridge, veth) while the containers run nothing. Two host threads drive the ends; both
spend their time in send/recv system calls, which release the GIL.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from dockmesh.diagnose.latency import ProbeError, Target
from dockmesh.host.netns import NetnsPool

_BUFFER = 256 * 1024


@dataclass(frozen=True, slots=True)
class BandwidthResult:
    bits_per_second: float
    bytes: int
    seconds: float
    tool: str = "dockmesh"

    def to_json(self) -> dict[str, object]:
        return {
            "bits_per_second": round(self.bits_per_second, 1),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "tool": self.tool,
        }


def _listener(address: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((address, 0))
        s.listen(1)
    except BaseException:
        s.close()
        raise
    return s


def _client() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


class _Receiver(threading.Thread):
    def __init__(self, listener: socket.socket, timeout_s: float) -> None:
        super().__init__(name="dockmesh-bw-recv", daemon=True)
        self.listener = listener
        self.timeout_s = timeout_s
        self.received = 0
        self.last_byte_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.listener.settimeout(self.timeout_s)
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(self.timeout_s)
                buf = bytearray(_BUFFER)
                view = memoryview(buf)
                while True:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    self.received += n
                    self.last_byte_at = time.perf_counter()
        except BaseException as e:
            self.error = e


def stream(pool: NetnsPool, target: Target, seconds: float) -> BandwidthResult:
    """Sends for `seconds` from SRC to DST; the rate is the bytes DST received over the
    time from the connection's start to its last byte."""
    assert target.src.pid is not None and target.dst.pid is not None
    listener = pool.run(target.dst.pid, _listener, target.address)
    with listener:
        port = listener.getsockname()[1]
        receiver = _Receiver(listener, timeout_s=max(5.0, seconds + 5))
        receiver.start()
        client = pool.run(target.src.pid, _client)
        with client:
            client.settimeout(5.0)
            payload = memoryview(bytes(_BUFFER))
            start = time.perf_counter()
            client.connect((target.address, port))
            end = start + seconds
            while time.perf_counter() < end:
                client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            receiver.join(timeout=seconds + 10)
        if receiver.error is not None:
            raise ProbeError(f"bandwidth stream failed: {receiver.error}")
        if receiver.is_alive() or receiver.received == 0:
            raise ProbeError("bandwidth stream: the receiving end got nothing")
    elapsed = receiver.last_byte_at - start
    return BandwidthResult(receiver.received * 8 / elapsed, receiver.received, elapsed)


def iperf3(target: Target, seconds: float, port: int = 5201) -> BandwidthResult:
    """The host's iperf3 run inside each namespace (`nsenter -n`): a server in DST's bound
    to its address, for one test, and a client in SRC's."""
    assert target.src.pid is not None and target.dst.pid is not None
    server = subprocess.Popen(
        [
            "nsenter",
            "-n",
            "-t",
            str(target.dst.pid),
            "iperf3",
            "-s",
            "-1",
            "-p",
            str(port),
            "-B",
            target.address,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out = ""
        for _ in range(50):  # the server needs a moment to listen
            time.sleep(0.1)
            proc = subprocess.run(
                [
                    "nsenter",
                    "-n",
                    "-t",
                    str(target.src.pid),
                    "iperf3",
                    "-c",
                    target.address,
                    "-p",
                    str(port),
                    "-t",
                    str(seconds),
                    "-J",
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
            )
            out = proc.stdout
            if proc.returncode == 0:
                break
            if "refused" not in (out + proc.stderr):
                break
        try:
            doc = json.loads(out)
            got = doc["end"]["sum_received"]
        except (ValueError, KeyError) as e:
            raise ProbeError(f"iperf3 gave no result: {out[-300:] or e}") from None
        return BandwidthResult(
            float(got["bits_per_second"]), int(got["bytes"]), float(got["seconds"]), "iperf3"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        server.wait()
