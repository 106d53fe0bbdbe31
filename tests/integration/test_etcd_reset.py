"""The etcd client's connection dropped by one task (`reset`, as the lease keeper and the
publisher do when a call fails) while another task's watch or call runs on it: grpc cancels
those calls, and they must end as `Unavailable` — retried by their loops — never as a
CancelledError that ends the task. Found on the lab: after the etcd members went down, an
agent whose publisher reset the connection first stopped following the shared catalog for
good (its watch task ended silently, its cache never changed again)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockmesh.catalog.etcdstore import Etcd, Unavailable
from tests.integration.test_etcd_catalog import EtcdProc

pytestmark = pytest.mark.integration


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProc]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is missing: scripts/setup.sh installs Debian's etcd-server")
    e = EtcdProc(tmp_path)
    e.start()
    try:
        yield e
    finally:
        e.stop()


def test_a_reset_by_another_task_ends_a_watch_as_unavailable(etcd: EtcdProc) -> None:
    async def main() -> BaseException | None:
        client = Etcd([("127.0.0.1", etcd.client_port)])

        async def watch() -> None:
            async for _ in client.watch("/dmt/", 1):
                pass

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        assert not task.done()
        await client.reset()
        await asyncio.wait([task], timeout=5)
        assert task.done() and not task.cancelled(), "the watch's task ended as cancelled"
        await client.close()
        return task.exception()

    assert isinstance(asyncio.run(main()), Unavailable)


def test_a_watch_whose_own_task_is_cancelled_is_still_cancelled(etcd: EtcdProc) -> None:
    async def main() -> bool:
        client = Etcd([("127.0.0.1", etcd.client_port)])

        async def watch() -> None:
            async for _ in client.watch("/dmt/", 1):
                pass

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.wait([task], timeout=5)
        await client.close()
        return task.cancelled()

    assert asyncio.run(main())


def test_an_ipv6_endpoint_connects(etcd: EtcdProc) -> None:
    # `--store etcd://[…]:PORT` gave aetcd the address without brackets: grpc took it for a
    # host name that never resolved, and the agent never reached the store. (The member
    # listens on 127.0.0.1: its IPv4-mapped IPv6 address reaches it.)
    async def main() -> int:
        client = Etcd([("::ffff:127.0.0.1", etcd.client_port)])
        try:
            _, revision, _ = await client.list_prefix("/dmt/")
            return revision
        finally:
            await client.close()

    assert asyncio.run(main()) >= 1


@pytest.mark.parametrize("page", [1000, 7])
def test_a_root_larger_than_one_grpc_message_is_listed_in_pages(
    etcd: EtcdProc, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    # 6 MB of values under the root (30 of 200 kB: anyone who can write to etcd, or some
    # 20 000 instances) was one response over grpc's 4 MiB limit: every listing failed and
    # the agent never followed the store. A page of 1000 is too large here and is halved
    # until it fits; pages of 7 cross several page edges.
    monkeypatch.setattr("dockmesh.catalog.etcdstore.LIST_PAGE", page)

    async def main() -> tuple[dict[str, bytes], int]:
        client = Etcd([("127.0.0.1", etcd.client_port)])
        try:
            for i in range(30):
                await client.write([(f"/dmt/big{i:02}", b"x" * 200_000)], [], 0)
            await client.write([("/dmu/outside", b"y")], [], 0)
            kvs, revision, _ = await client.list_prefix("/dmt/")
            return kvs, revision
        finally:
            await client.close()

    kvs, revision = asyncio.run(main())
    assert sorted(kvs) == [f"/dmt/big{i:02}" for i in range(30)]
    assert all(len(v) == 200_000 for v in kvs.values()) and revision >= 31
