"""The model exchange's encodings and error feedback on hand-computed numbers (fedbiobert/codec.py,
fedbiobert/roles/exchange.py)."""
import pytest
import torch

from fedbiobert.codec import ErrorFeedbackSender, changed_row_share, decode, encode, encode_tensor
from fedbiobert.roles.exchange import ModelExchange, ResidualFiles


def test_int8_rows_hand_computed():
    # row 0: max |x| = 1.27 -> scale 0.01, payload round(x / 0.01); row 1 all zero -> scale 1, payload 0
    delta = {"w": torch.tensor([[1.27, -0.5, 0.004, 0.006], [0.0, 0.0, 0.0, 0.0]])}
    encoded = encode(delta, "int8")
    tensor = encoded.tensors["w"]
    assert tensor.payload.dtype == torch.int8
    assert tensor.payload.tolist() == [[127, -50, 0, 1], [0, 0, 0, 0]]
    torch.testing.assert_close(tensor.scale, torch.tensor([[0.01], [1.0]]))
    assert encoded.nbytes == 8 * 1 + 2 * 4  # one byte an element, one fp32 scale a row
    torch.testing.assert_close(decode(encoded)["w"], torch.tensor([[1.27, -0.5, 0.0, 0.01], [0.0] * 4]))


def test_vectors_are_one_row_and_sizes_per_dtype():
    vector = torch.tensor([0.5, -0.25, 0.125])
    assert encode_tensor(vector, "int8").nbytes == 3 + 4
    assert encode_tensor(vector, "fp16").nbytes == 3 * 2 + 4
    assert encode_tensor(vector, "bf16").nbytes == 3 * 2
    assert encode_tensor(vector, "fp32").nbytes == 3 * 4
    for dtype in ("fp32", "bf16", "fp16"):  # powers of two: exact in these
        torch.testing.assert_close(decode(encode({"v": vector}, dtype))["v"], vector, rtol=0, atol=0)
    # int8: scale 0.5 / 127, so an element is off by at most half a step
    torch.testing.assert_close(decode(encode({"v": vector}, "int8"))["v"], vector, rtol=0, atol=0.5 / 127 / 2)


def test_fp16_with_a_scale_keeps_tiny_deltas_bf16_rounds_them():
    tiny = torch.tensor([[3.0e-7, 1.0e-7, 2.0e-7]])  # below fp16's normal range without a scale
    fp16 = decode(encode({"t": tiny}, "fp16"))["t"]
    torch.testing.assert_close(fp16, tiny, rtol=1e-3, atol=0)
    bf16 = decode(encode({"t": tiny}, "bf16"))["t"]
    assert not torch.equal(bf16, tiny)  # 8 bits of mantissa
    torch.testing.assert_close(bf16, tiny, rtol=1e-2, atol=0)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="accepted: fp32, bf16, fp16, int8"):
        encode_tensor(torch.ones(2), "int4")


def test_error_feedback_carries_the_loss_to_the_next_round():
    # int8 of [1.0, 0.003]: scale 1/127, 0.003*127 = 0.381 rounds to 0 -> 0.003 is lost, kept as residual
    sender = ErrorFeedbackSender("int8", error_feedback=True)
    first = sender.send({"w": torch.tensor([1.0, 0.003])})
    torch.testing.assert_close(first.delta["w"], torch.tensor([1.0, 0.0]))
    assert sender.residual["w"].dtype == torch.bfloat16
    torch.testing.assert_close(sender.residual["w"].float(), torch.tensor([0.0, 0.003]), rtol=4e-3, atol=0)
    assert first.relative_error == pytest.approx(0.003 / (1 + 0.003**2) ** 0.5, rel=1e-5)
    # next round the same small delta again: corrected 0.006 against max 1.0 -> round(0.762) = 1 step of 1/127
    second = sender.send({"w": torch.tensor([1.0, 0.003])})
    torch.testing.assert_close(second.delta["w"], torch.tensor([1.0, 1 / 127]))
    # the residual went in as bf16(0.003): 0.0030060 - 1/127 + 0.003 ... within bf16 rounding of the hand value
    torch.testing.assert_close(sender.residual["w"].float(), torch.tensor([0.0, 0.006 - 1 / 127]), rtol=1e-2, atol=0)


def test_error_feedback_bounds_the_drift_over_many_rounds():
    torch.manual_seed(0)
    deltas = [{"w": torch.randn(8, 16) * 1e-3} for _ in range(50)]
    true_sum = sum(delta["w"] for delta in deltas)
    sums = {}
    for feedback in (True, False):
        sender = ErrorFeedbackSender("int8", error_feedback=feedback)
        # send consumes its input
        sums[feedback] = sum(sender.send({"w": delta["w"].clone()}).delta["w"] for delta in deltas)
    with_feedback = float((sums[True] - true_sum).abs().max())
    without = float((sums[False] - true_sum).abs().max())
    # with feedback the sum is off by about one residual (half an int8 step of one round; the bf16
    # rounding of the kept residual adds a little)
    assert with_feedback <= 1.1 * float(max(d["w"].abs().max() for d in deltas)) / 127
    assert with_feedback < without


def test_fp32_never_keeps_a_residual():
    sender = ErrorFeedbackSender("fp32", error_feedback=True)
    sent = sender.send({"w": torch.tensor([1e-9, 3.0])})
    assert sender.residual == {} and sent.relative_error == 0.0


def test_changed_row_share_counts_matrices_only():
    delta = {"emb": torch.tensor([[0.0, 0.0], [0.0, 1e-8], [2.0, 0.0], [0.0, 0.0]]), "bias": torch.ones(3)}
    assert changed_row_share(delta, ["emb", "bias"]) == 0.5
    assert changed_row_share(delta, ["bias"]) is None


def test_model_exchange_upload_is_round_start_plus_what_survived():
    start = {"w": torch.zeros(2, 3), "step": torch.tensor(4)}
    exchange = ModelExchange("int8", True, ["w"], start)
    trained = {"w": torch.tensor([[0.127, 0.0, -0.0004], [0.0, 0.0, 0.0]]), "step": torch.tensor(5)}
    upload = exchange.upload(silo_id=3, trained=trained, round_start=start)
    torch.testing.assert_close(upload.state["w"], torch.tensor([[0.127, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert upload.nbytes == 6 + 2 * 4 and exchange.fp32_bytes == 24
    assert set(exchange.uplinks) == {3}  # a residual per silo
    torch.testing.assert_close(exchange.uplinks[3].residual["w"].float(),
                               torch.tensor([[0.0, 0.0, -0.0004], [0.0] * 3]),
                               rtol=4e-3, atol=0)


def test_fp32_exchange_passes_the_trained_weights_bit_for_bit():
    start = {"w": torch.randn(4, 4)}
    trained = {"w": start["w"] + torch.randn(4, 4) * 1e-6}
    exchange = ModelExchange("fp32", True, ["w"], start)
    upload = exchange.upload(0, trained, start)
    assert upload.state["w"] is trained["w"] and upload.nbytes == 64
    download = exchange.download(start, trained)
    assert download.state is trained and download.relative_error is None


@pytest.mark.parametrize("keep_rounds,kept", [(None, [1, 2, 4, 5]), (3, [2, 4, 5]), (1, [5])])
def test_residual_files_are_kept_as_long_as_their_checkpoints(tmp_path, keep_rounds, kept):
    files = ResidualFiles(tmp_path / "exchange", keep_rounds)
    for round_number in (1, 2, 4, 5):  # silo 7 sampled in rounds 1, 2, 4 and 5
        files.save("silo7", round_number, {"w": torch.full((2,), float(round_number), dtype=torch.bfloat16)})
    # --keep_exports 3 keeps checkpoints 3-5; resuming round 3 needs silo 7's residual since round 2
    assert sorted(int(path.name.split("round")[1][:-3]) for path in (tmp_path / "exchange").iterdir()) == kept
    assert files.load("silo7", 9)["w"].tolist() == [5.0, 5.0]
    if keep_rounds != 1:
        assert files.load("silo7", 3)["w"].tolist() == [2.0, 2.0]
    assert files.load("silo8", 4) is None


def test_a_resumed_exchange_continues_bit_for_bit(tmp_path):
    start = {"w": torch.zeros(3, 5)}
    deltas = [{"w": torch.randn(3, 5, generator=torch.Generator().manual_seed(seed)) * 1e-3} for seed in range(3)]
    whole = ModelExchange("int8", True, ["w"], start)
    sent_whole = [whole.upload(0, {"w": d["w"]}, start).state["w"] for d in deltas]
    first, files = ModelExchange("int8", True, ["w"], start), ResidualFiles(tmp_path)
    sent = [first.upload(0, {"w": d["w"]}, start).state["w"] for d in deltas[:2]]
    first.download(start, {"w": torch.ones(3, 5) * 1e-3})
    first.save_residuals(files, 2, [0], aggregator=True)
    resumed = ModelExchange("int8", True, ["w"], start)
    resumed.load_residuals(files, 2, [0], aggregator=True)
    sent.append(resumed.upload(0, {"w": deltas[2]["w"]}, start).state["w"])
    assert all(torch.equal(a, b) for a, b in zip(sent, sent_whole))
    assert torch.equal(resumed.downlink.residual["w"], first.downlink.residual["w"])


def test_a_fresh_run_forgets_an_earlier_attempts_residuals(tmp_path):
    files = ResidualFiles(tmp_path)
    files.save("silo1", 1, {"w": torch.ones(2, dtype=torch.bfloat16)})
    files.save("aggregate", 1, {"w": torch.ones(2, dtype=torch.bfloat16)})
    exchange = ModelExchange("int8", True, ["w"], {"w": torch.zeros(2)})
    exchange.load_residuals(files, None, [1], aggregator=True)
    assert list(tmp_path.iterdir()) == [] and exchange.downlink.residual == {}
