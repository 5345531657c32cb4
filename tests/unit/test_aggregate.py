"""FedAvg arithmetic on hand-computed numbers."""
import pytest
import torch

from fedbiobert.aggregate import WeightedSum, weighted_average


def test_weighted_average_matches_hand_computation():
    states = [{"w": torch.tensor([1.0, 2.0]), "step": torch.tensor(3)},
              {"w": torch.tensor([4.0, 8.0]), "step": torch.tensor(5)}]
    # weights 1 and 3: (1*1 + 3*4)/4 = 3.25, (1*2 + 3*8)/4 = 6.5; integer buffers are not averaged
    result = weighted_average(states, [1, 3])
    torch.testing.assert_close(result["w"], torch.tensor([3.25, 6.5]))
    assert "step" not in result


def test_uniform_weights_give_the_plain_mean():
    states = [{"w": torch.tensor([float(v)])} for v in (1, 2, 6)]
    torch.testing.assert_close(weighted_average(states, [1, 1, 1])["w"], torch.tensor([3.0]))


def test_weighted_sum_across_simulated_processes_equals_the_pure_average():
    states = [{"a": torch.randn(3, 2), "b": torch.randn(4)} for _ in range(4)]
    weights = [10, 20, 30, 40]
    process_sums = [WeightedSum(states[0]), WeightedSum(states[0])]
    for index, (state, weight) in enumerate(zip(states, weights)):
        process_sums[index % 2].add(state, weight)
    combined = process_sums[0].flat + process_sums[1].flat  # what the all-reduce computes
    result = process_sums[0].reduce(lambda flat: combined)
    expected = weighted_average(states, weights)
    for key in expected:
        torch.testing.assert_close(result[key], expected[key])


def test_weighted_sum_restricted_to_keys_and_empty_when_nobody_trained():
    template = {"encoder.w": torch.ones(2), "embeddings.w": torch.ones(2)}
    accumulator = WeightedSum(template, keys=["encoder.w"])
    assert accumulator.keys == ["encoder.w"]
    assert accumulator.reduce(lambda flat: flat) is None


def test_bad_weights_are_refused():
    with pytest.raises(ValueError):
        weighted_average([{"w": torch.ones(1)}], [0.0])
    with pytest.raises(ValueError):
        weighted_average([{"w": torch.ones(1)}], [1.0, 2.0])
