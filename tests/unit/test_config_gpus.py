"""validate_world's GPU count: without --gpu_ids, local rank i takes GPU i, so a node needs a GPU per
local process (counts are given, so no GPU is needed here)."""
import pytest

from fedbiobert.config import ConfigError, parse_config, validate_world


def _check(argv, world, local, count):
    validate_world(parse_config(["--on_cuda", "True", *argv]), world_size=world, local_world_size=local,
                   cuda_available=True, cuda_device_count=count)


@pytest.mark.parametrize("local,count", [(3, 2), (3, 0), (4, 1)])
def test_fewer_gpus_than_local_processes_names_both_and_the_fix(local, count):
    with pytest.raises(ConfigError) as error:
        _check([], local, local, count)
    message = str(error.value)
    assert f"runs {local} processes on this node but it has {count} GPU(s)" in message
    assert "pass --gpu_ids to map ranks explicitly (e.g. --gpu_ids " in message and "\n" not in message


def test_the_example_mapping_is_one_the_check_accepts():
    with pytest.raises(ConfigError) as error:
        _check([], 4, 4, 2)
    example = str(error.value).split("--gpu_ids ")[2].split(";")[0]
    assert example == "0,1,0,1"
    _check(["--gpu_ids", example], 4, 4, 2)


@pytest.mark.parametrize("argv,world,local,count", [
    ([], 3, 3, 3),                          # a GPU per process
    ([], 3, 3, 8),
    (["--n_clients", "5"], 6, 3, 3),        # two nodes of 3 processes, 3 GPUs each: the count is per node
    (["--gpu_ids", "0,0,0"], 3, 3, 1),      # an explicit mapping is the user's choice
])
def test_enough_gpus_or_an_explicit_mapping_passes(argv, world, local, count):
    _check(argv, world, local, count)


def test_the_count_is_not_read_on_cpu():
    validate_world(parse_config([]), world_size=3, local_world_size=3, cuda_available=False, cuda_device_count=0)
