"""A health probe that answers as scripted, for the health runner and the agent on a
virtual-time loop (`dockmesh.testing.loop`): no sockets, every instant it records is the
loop's.

    probe = ScriptedProbe({"web-check": ["critical", "passing"]}, takes=0.5)
    HealthRunner(live, probe, ...)
    probe.times("web-check")   # when each probe of that check went out
    probe.default = "critical" # what every later probe answers once its script is spent
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from dockmesh.health.probe import Result
from dockmesh.model.catalog import CheckSpec, Status


class ScriptedProbe:
    """A `health.probe.Probe`: records (loop time, check id) of every call, answers from a
    script per check (then `default`), after `takes` seconds of the loop's time, or never
    for the check ids in `hang`; records those cancelled meanwhile, and how many ran at once."""

    def __init__(
        self,
        script: Mapping[str, Iterable[Status]] | None = None,
        *,
        default: Status = "passing",
        takes: float = 0.0,
        hang: Iterable[str] = (),
    ) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default: Status = default
        self.takes = takes
        self.hang = set(hang)
        self.calls: list[tuple[float, str]] = []
        self.cancelled: list[tuple[float, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, spec: CheckSpec) -> Result:
        loop = asyncio.get_running_loop()
        self.calls.append((loop.time(), spec.id))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if spec.id in self.hang:
                await loop.create_future()
            if self.takes:
                await asyncio.sleep(self.takes)
            queue = self.script.get(spec.id)
            status = queue.pop(0) if queue else self.default
            return Result(status, f"{spec.id}: {status}")
        except asyncio.CancelledError:
            self.cancelled.append((loop.time(), spec.id))
            raise
        finally:
            self.in_flight -= 1

    def times(self, check_id: str) -> list[float]:
        """When each probe of `check_id` went out, in the loop's time."""
        return [t for t, c in self.calls if c == check_id]
