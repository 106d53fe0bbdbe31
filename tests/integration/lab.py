"""Extra Docker engines ("hosts") for multi-host tests, each in its own network namespace.

    with Lab(prefix) as lab:
        h1, h2 = lab.engine("h1"), lab.engine("h2")
        lab.swarm(h1, h2)

Every engine is a real `dockerd` started with nsenter into a namespace the lab created. The
engines are joined by a bridge that lives in a namespace of its own (the lab's "switch"), so
their traffic never crosses the host's firewall (Docker's FORWARD policy would drop it) and
has no route off that bridge. The lab stops only
the dockerd processes it started (by pid) and removes only what it created.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import docker
import docker.errors

LAB_ROOT = "/var/lib/dockmesh-lab"
RUN_ROOT = "/run/dockmesh-lab"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class LabEngine:
    name: str
    netns: str
    address: str
    url: str
    proc: subprocess.Popen[bytes] | None
    data_root: str
    exec_root: str
    api: Any = field(default=None)


class Lab:
    def __init__(self, prefix: str, subnet: str) -> None:
        self.prefix = prefix
        self.net = ipaddress.IPv4Network(subnet)
        self.switch = f"{prefix}sw"
        self.bridge = "br0"
        self.engines: list[LabEngine] = []
        self._switch_made = False

    def __enter__(self) -> Lab:
        sh("ip", "netns", "add", self.switch)
        self._switch_made = True
        sh("ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", self.bridge, "up")
        return self

    def engine(self, name: str, timeout: float = 60) -> LabEngine:
        """A dockerd in a new namespace at the next address of the lab's subnet."""
        idx = len(self.engines) + 2
        ns = f"{self.prefix}{name}"
        addr = str(self.net.network_address + idx)
        inside, outside = f"{self.prefix}{name}i"[:15], f"{self.prefix}{name}o"[:15]
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        sh("ip", "link", "set", inside, "netns", ns)
        sh("ip", "link", "set", outside, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", outside, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/{self.net.prefixlen}", "dev", inside)
        sh("ip", "-n", ns, "link", "set", inside, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        data_root = f"{LAB_ROOT}/{ns}"
        exec_root = f"{RUN_ROOT}/{ns}"
        os.makedirs(data_root, exist_ok=True)
        os.makedirs(exec_root, exist_ok=True)
        sock = f"{RUN_ROOT}/{ns}.sock"
        eng = LabEngine(name, ns, addr, f"unix://{sock}", None, data_root, exec_root)
        self.engines.append(eng)
        self._start(eng, timeout)
        return eng

    def _start(self, eng: LabEngine, timeout: float) -> None:
        sock = eng.url.removeprefix("unix://")
        log = open(f"{RUN_ROOT}/{eng.netns}.log", "ab")  # noqa: SIM115 - the daemon keeps it
        # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then loses cgroups.
        eng.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{eng.netns}",
                "dockerd",
                "--data-root",
                eng.data_root,
                "--exec-root",
                eng.exec_root,
                "-H",
                eng.url,
                "--pidfile",
                f"{eng.exec_root}.pid",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if eng.proc.poll() is not None:
                raise RuntimeError(f"dockerd {eng.netns} exited: see {RUN_ROOT}/{eng.netns}.log")
            if os.path.exists(sock):
                try:
                    api = docker.APIClient(base_url=eng.url, version="auto", timeout=60)
                    api.ping()
                    eng.api = api
                    return
                except docker.errors.DockerException:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"dockerd {eng.netns} did not answer within {timeout} s")

    def _stop(self, eng: LabEngine) -> None:
        if eng.proc is None or eng.proc.poll() is not None:
            return
        os.killpg(eng.proc.pid, signal.SIGTERM)
        try:
            eng.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(eng.proc.pid, signal.SIGKILL)
            eng.proc.wait(timeout=10)

    def restart(self, eng: LabEngine, timeout: float = 60) -> None:
        """Stops the engine's dockerd (the one this lab started) and starts it again."""
        if eng.api is not None:
            eng.api.close()
            eng.api = None
        self._stop(eng)
        self._start(eng, timeout)

    def load_image(self, source: Any, ref: str, into: LabEngine) -> None:
        """Copies an image from one engine to another (no registry here)."""
        data = b"".join(source.get_image(ref))
        into.api.load_image(data)

    def swarm(self, manager: LabEngine, *workers: LabEngine) -> None:
        manager.api.init_swarm(
            advertise_addr=manager.address, listen_addr=f"{manager.address}:2377"
        )
        token = manager.api.inspect_swarm()["JoinTokens"]["Worker"]
        for w in workers:
            w.api.join_swarm(
                [f"{manager.address}:2377"],
                token,
                listen_addr=f"{w.address}:2377",
                advertise_addr=w.address,
            )

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for eng in reversed(self.engines):
            if eng.api is not None:
                with contextlib.suppress(Exception):
                    for c in eng.api.containers(all=True):
                        eng.api.remove_container(c["Id"], force=True)
                with contextlib.suppress(Exception):
                    eng.api.leave_swarm(force=True)
                with contextlib.suppress(Exception):
                    eng.api.close()
            self._stop(eng)
            subprocess.run(["ip", "netns", "del", eng.netns], check=False, capture_output=True)
            # dockerd unmounted its layers on the way out; what remains is plain files.
            subprocess.run(["umount", "-R", eng.data_root], check=False, capture_output=True)
            shutil.rmtree(eng.data_root, ignore_errors=True)
            shutil.rmtree(eng.exec_root, ignore_errors=True)
            for leftover in (
                f"{RUN_ROOT}/{eng.netns}.sock",
                f"{RUN_ROOT}/{eng.netns}.log",
                f"{eng.exec_root}.pid",
            ):
                with contextlib.suppress(OSError):
                    os.remove(leftover)
        if self._switch_made:  # its bridge and the veth ends go with it
            subprocess.run(["ip", "netns", "del", self.switch], check=False, capture_output=True)
