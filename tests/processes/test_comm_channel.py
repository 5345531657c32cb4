"""Channel over real gloo processes: any-source receive, payload integrity, byte accounting, timeouts."""
import json
import time

import pytest
import torch

from fedbiobert.comm.errors import PeerError
from fedbiobert.comm.groups import shutdown
from fedbiobert.comm.wan import WanModel
from fedbiobert.comm.messages import HEADER_BYTES, Control, Kind, Message
from tests.support.distributed import run_processes, world_channel


def _channel(timeout_s: float):
    channel, groups, _ = world_channel(timeout_s)
    return channel.rank, channel


def _exchange_worker(rank, world_size, out_dir):
    rank, channel = _channel(timeout_s=30)
    if rank == 0:  # server: take 2 messages + ROUND_DONE from each client, in arrival order
        seen = []
        for _ in range(3 * (world_size - 1)):
            message = channel.recv(None)
            if message.kind is Kind.ACTIVATION:
                expected = torch.full((2, 3), float(message.source * 10 + message.step))
                assert torch.equal(message.tensors[0], expected)
                assert torch.equal(message.tensors[1], torch.arange(message.step + 1))
                channel.send(Message(Kind.OUTPUT, step=message.step, tensors=[message.tensors[0] * 2]),
                             message.source)
            seen.append([message.source, message.kind.name, message.step])
        channel.flush()
        result = {"seen": seen, "bytes": channel.bytes.as_dict()}
    else:  # client: send 2 activations, read both outputs back, then say ROUND_DONE
        for step in range(2):
            channel.send(Message(Kind.ACTIVATION, silo_id=rank, step=step,
                                 tensors=[torch.full((2, 3), float(rank * 10 + step)), torch.arange(step + 1)]), 0)
        outputs = [channel.recv(0) for _ in range(2)]
        assert [o.step for o in outputs] == [0, 1]
        assert torch.equal(outputs[1].tensors[0], torch.full((2, 3), float(rank * 10 + 1)) * 2)
        channel.send(Message(Kind.CONTROL, control=Control.ROUND_DONE), 0)
        channel.flush()
        result = {"bytes": channel.bytes.as_dict()}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()


def test_server_receives_from_any_client_and_bytes_equal_tensor_sizes(tmp_path):
    run_processes(_exchange_worker, 3, tmp_path, timeout=60)
    server = json.loads((tmp_path / "rank0.json").read_text())
    per_client = {}
    for source, kind, step in server["seen"]:
        per_client.setdefault(source, []).append((kind, step))
    for source in (1, 2):  # FIFO per client, whatever the interleaving between clients
        assert per_client[source] == [("ACTIVATION", 0), ("ACTIVATION", 1), ("CONTROL", -1)]
    activation_bytes = 2 * 3 * 4 + 1 * 8 + 2 * 3 * 4 + 2 * 8  # float32 (2,3) + int64 arange, steps 0 and 1
    output_bytes = 2 * (2 * 3 * 4)
    for rank in (1, 2):
        client = json.loads((tmp_path / f"rank{rank}.json").read_text())["bytes"]
        assert client["sent_activation"] == activation_bytes
        assert client["received_output"] == output_bytes
        assert client["bytes_sent"] == activation_bytes + 3 * HEADER_BYTES
    assert server["bytes"]["received_activation"] == 2 * activation_bytes
    assert server["bytes"]["bytes_received"] == 2 * activation_bytes + 6 * HEADER_BYTES


def _timeout_worker(rank, world_size, out_dir):
    rank, channel = _channel(timeout_s=2)
    if rank == 0:
        started = time.time()
        with pytest.raises(PeerError) as error:
            channel.recv(1)
        (out_dir / "error.json").write_text(json.dumps({"message": str(error.value),
                                                        "seconds": time.time() - started}))
    else:
        time.sleep(6)  # silent peer
    shutdown()


def test_a_silent_peer_times_out_with_a_message_naming_it(tmp_path):
    run_processes(_timeout_worker, 2, tmp_path, timeout=60)
    report = json.loads((tmp_path / "error.json").read_text())
    assert "timed out" in report["message"] and "client rank 1" in report["message"]
    assert 1.5 < report["seconds"] < 10


def test_wan_model_delivery_times_by_hand():
    wan = WanModel(bandwidth_mbps=100, latency_ms=5)  # 12.5 MB/s
    assert wan.transfer_seconds(1_250_000) == pytest.approx(0.105)
    assert wan.delivery_time(1, 1_250_000, now=10.0) == pytest.approx(10.105)  # 0.1 s on the wire + 5 ms
    # posted while the first still occupies the link: it waits its turn (10.1), then 10 ms on the wire
    assert wan.delivery_time(1, 125_000, now=10.05) == pytest.approx(10.115)
    assert wan.delivery_time(2, 125_000, now=10.05) == pytest.approx(10.065)  # another peer's link is free
    assert wan.delivery_time(1, 0, now=20.0) == pytest.approx(20.005)  # an idle link: latency only
    assert WanModel(None, 5).delivery_time(1, 10**9, now=1.0) == pytest.approx(1.005)  # latency-only link


def _link_worker(rank, world_size, out_dir):
    wan = WanModel(bandwidth_mbps=8, latency_ms=50)  # 1 MB/s: 100 kB take 0.1 s, then 50 ms latency
    channel, _, _ = world_channel(30, wan)
    if rank == 1:
        sent_at = time.time()
        channel.send(Message(Kind.ACTIVATION, step=0, tensors=[torch.zeros(25_000)]), 0)  # 100,000 bytes
        channel.flush()
        (out_dir / "sent.json").write_text(json.dumps(sent_at))
    else:
        channel.recv(1)
        (out_dir / "received.json").write_text(json.dumps(time.time()))
    shutdown()


def test_an_emulated_wan_holds_a_message_for_its_latency_plus_bytes_over_bandwidth(tmp_path):
    run_processes(_link_worker, 2, tmp_path, timeout=60)
    sent = json.loads((tmp_path / "sent.json").read_text())
    received = json.loads((tmp_path / "received.json").read_text())
    wire_bytes = 100_000 + HEADER_BYTES
    assert received - sent >= wire_bytes / 1e6 + 0.05 - 0.002  # the receiver waited for the emulated link


SENT = 200
RUN_AHEAD = 2  # the client reads OUTPUT b - RUN_AHEAD right after sending ACTIVATION b (client-head mode)


def _activation(step: int) -> Message:
    return Message(Kind.ACTIVATION, step=step, tensors=[torch.full((4, 16, 32), float(step)),  # 8 kB of hidden
                                                        torch.ones(4, 16, dtype=torch.uint8), torch.arange(10)])


def _memory_worker(rank, world_size, out_dir):
    channel, _, _ = world_channel()
    if rank == 0:  # server: take each message as it comes; answer an ACTIVATION with its OUTPUT
        for _ in range(2 * SENT + 1):
            message = channel.recv(None)
            if message.kind is Kind.ACTIVATION:
                channel.send(Message(Kind.OUTPUT, step=message.step, tensors=[message.tensors[0][:, :2]]), 1)
    else:  # client: runs ahead by RUN_AHEAD batches, answers each OUTPUT with a GRAD; no flush until the end
        def settle(step):
            output = channel.recv(0)
            assert output.kind is Kind.OUTPUT and output.step == step
            channel.send(Message(Kind.GRAD, step=step, tensors=[output.tensors[0] * 2]), 0)
        for step in range(SENT):
            channel.send(_activation(step), 0)
            if step >= RUN_AHEAD:
                settle(step - RUN_AHEAD)
        for step in range(SENT - RUN_AHEAD, SENT):
            settle(step)
        channel.send(Message(Kind.CONTROL, control=Control.ROUND_DONE), 0)
    held_before_flush = channel.held_tensors
    channel.flush()
    (out_dir / f"held{rank}.json").write_text(json.dumps({
        "peak_tensors": channel.peak_held_tensors, "peak_bytes": channel.peak_held_bytes,
        "before_flush": held_before_flush, "after_flush": [channel.held_tensors, channel.held_bytes],
        "sent_tensors": sum(n for (way, _), n in channel.bytes.messages.items() if way == "sent")}))
    shutdown()


def test_completed_sends_are_released_without_a_flush(tmp_path):
    """Client-head traffic over real gloo processes: what a channel holds stays a few messages,
    whatever the number sent (without releasing completed sends it would be all 200)."""
    run_processes(_memory_worker, 2, tmp_path, timeout=60)
    client = json.loads((tmp_path / "held1.json").read_text())
    server = json.loads((tmp_path / "held0.json").read_text())
    activation = _activation(0)
    assert 3 <= client["peak_tensors"] <= 8 * len(activation.tensors)  # sent: 200 x 3 + 200 GRADs
    assert client["peak_bytes"] <= 8 * activation.payload_bytes
    assert 1 <= server["peak_tensors"] <= 8  # sent: 200 OUTPUTs of 1 tensor
    assert client["after_flush"] == [0, 0] and server["after_flush"] == [0, 0]
