"""TransferService against an in-process coordinator: chunked uploads and downloads, pages."""

from __future__ import annotations

import pickle

import grpc
import pytest
from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import transfer_service_pb2_grpc as ts_grpc
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.errors import StoredObjectMissing
from fleetflow.store.access import StoreClient
from fleetflow.store.codec import encode_frame
from fleetflow.store.remote import TransferClient

from tests.review.rpc import coordinator

#: Any message over this fails on the test's channel: proves the chunking.
SMALL_MESSAGES = [
    ("grpc.max_send_message_length", 2 << 20),
    ("grpc.max_receive_message_length", 2 << 20),
]


def _channel(coord):
    return grpc.aio.insecure_channel(coord.address, options=SMALL_MESSAGES)


async def test_store_info_names_the_hosted_folder_and_the_limits():
    async with coordinator(inline_max_bytes=1000, result_chunk_bytes=5000) as coord:
        info = await ts_grpc.TransferServiceStub(coord.channel).GetStoreInfo(
            ts.GetStoreInfoRequest(), timeout=5
        )
        assert info.hosted and info.url.startswith("file:///") and len(info.store_id) == 32
        assert (info.inline_max_bytes, info.chunk_bytes) == (1000, 5000)
        assert info.transfer_chunk_bytes == 1 << 20
        direct = StoreClient(info, None)
        assert not direct.remote and direct.local.url == info.url


async def test_a_payload_far_over_the_message_limit_streams_both_ways(tmp_path):
    async with coordinator() as coord:
        channel = _channel(coord)
        transfer = TransferClient(channel)
        info = await transfer.store_info()
        remote = StoreClient(info, transfer, direct=False, spool_dir=str(tmp_path / "spool"))
        assert remote.remote
        payload = bytes(range(256)) * (40 << 12)  # 40 MiB, 20 times the channel's limit
        ref = await remote.put_value("runs/f1/1.1.r", payload)
        # it is in the coordinator's folder, verified, and readable directly there
        hosted = StoreClient(info, None)
        assert await hosted.load(ref) == payload
        # and from another machine's point of view: downloaded in chunks into a spool
        other = StoreClient(info, transfer, direct=False, spool_dir=str(tmp_path / "other"))
        assert await other.load(ref) == payload
        remote.close()
        other.close()
        await channel.close()


async def test_an_upload_from_a_spool_and_a_pack(tmp_path):
    async with coordinator() as coord:
        transfer = TransferClient(coord.channel)
        remote = StoreClient(
            await transfer.store_info(), transfer, direct=False, spool_dir=str(tmp_path)
        )
        refs = remote.local.put_pack("runs/f2/3.1.p0", [encode_frame(i) for i in range(100)])
        await remote.publish(["runs/f2/3.1.p0"])
        hosted = StoreClient(await transfer.store_info(), None)
        assert [await hosted.load(r) for r in refs[:3]] == [0, 1, 2]
        items = await remote.put_items("runs/f2/4.1.s", list(range(50_000)))
        assert len(items.chunks) > 1
        assert await hosted.load_item(items[49_999]) == 49_999
        assert await remote.load_items(items) == list(range(50_000))


async def test_a_key_is_written_once():
    async with coordinator() as coord:
        transfer = TransferClient(coord.channel)
        first = await transfer.upload_frames("runs/f3/1.1.r", [encode_frame(b"one")])
        again = await transfer.upload_frames("runs/f3/1.1.r", [encode_frame(b"one")])
        assert first == again  # a retried upload of the same bytes is fine
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await transfer.upload_frames("runs/f3/1.1.r", [encode_frame(b"two")])
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "runs/f3/1.1.r" in info.value.details()


@pytest.mark.parametrize("key", ["../x", "runs/../../etc", "runs/a", "elsewhere/a/b"])
async def test_keys_outside_the_layout_are_refused(key):
    async with coordinator() as coord:
        transfer = TransferClient(coord.channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await transfer.upload_frames(key, [encode_frame(1)])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_upload_that_does_not_match_its_checksum_is_dropped():
    async with coordinator() as coord:
        stub = ts_grpc.TransferServiceStub(coord.channel)

        async def messages():
            yield ts.WriteObjectRequest(key="runs/f4/1.1.r", data=b"abc")
            yield ts.WriteObjectRequest(last=True, size=3, checksum=b"\0" * 16)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.WriteObject(messages(), timeout=5)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert not coord.rt.results.objects.exists("runs/f4/1.1.r")


async def test_a_missing_object_is_named(tmp_path):
    async with coordinator() as coord:
        transfer = TransferClient(coord.channel)
        spool = StoreClient(
            await transfer.store_info(), transfer, direct=False, spool_dir=str(tmp_path)
        )
        with pytest.raises(StoredObjectMissing, match="runs/f5/1.1.r"):
            await transfer.download("runs/f5/1.1.r", spool.local)


async def test_node_values_come_in_bounded_pages():
    n = 30_000
    async with coordinator() as coord:
        spec = common_pb2.FlowSpec(name="pages")
        node = spec.nodes.add(task_name="f", map=True)
        arg = node.args.add(name="x", mapped=True)
        arg.literal_items.items.extend(pickle.dumps(i) for i in range(n))
        flow_run_id = (await coord.submit(spec)).flow_run_id
        await coord.register("w1", ["f"], cpu=1000)
        done = 0
        while done < n:
            leases = (await coord.lease("w1", n=1000)).leases
            assert leases
            outcomes = [
                ws.Outcome(
                    task_run_id=lease.task_run_id,
                    attempt=lease.attempt,
                    value=pickle.dumps(lease.index * 2),
                )
                for lease in leases
            ]
            await coord.report("w1", *outcomes)
            done += len(leases)
        channel = _channel(coord)
        values = await TransferClient(channel).node_values(flow_run_id, 0, n)
        assert [pickle.loads(v) for v in values] == [2 * i for i in range(n)]
        # a page of the stream stays far under the channel's 2 MiB
        stub = ts_grpc.TransferServiceStub(channel)
        pages = [
            p
            async for p in stub.ReadNodeValues(
                ts.ReadNodeValuesRequest(flow_run_id=flow_run_id, node=0, start=100), timeout=10
            )
        ]
        assert len(pages) == 2 and pages[0].start == 100
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await TransferClient(channel).node_values("nope", 0, 1)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await channel.close()
