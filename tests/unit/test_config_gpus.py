"""validate_world's GPU count: without --gpu_ids, local rank i takes visible GPU i % count, so the processes
of a node that share its GPUs need one each; under srun with GPUs bound per task each process sees only its
own and needs one. Counts are given, so no GPU is needed here; each accepted case also checks the GPU every
local process then takes (session.device_index, what select_device uses)."""
import pytest

from fedbiobert.comm.launch_env import LaunchInfo
from fedbiobert.config import ConfigError, parse_config, validate_world
from fedbiobert.config import preflight
from fedbiobert.session import device_index


def _check(argv, world, local, count, bound=False):
    config = parse_config(["--on_cuda", "True", *argv])
    validate_world(config, world_size=world, local_world_size=local, cuda_available=True, cuda_device_count=count,
                   gpus_bound_per_task=bound)
    return config


def _devices_taken(config, world, local, count):
    """The visible GPU index each local process of node 0 takes."""
    return [device_index(config, LaunchInfo(rank, world, rank, local), count) for rank in range(local)]


@pytest.mark.parametrize("local,count", [(3, 2), (3, 0), (4, 1)])
def test_fewer_gpus_than_local_processes_names_both_and_the_fix(local, count):
    with pytest.raises(ConfigError) as error:
        _check([], local, local, count)
    message = str(error.value)
    assert f"runs {local} processes on this node but it has {count} GPU(s)" in message
    assert "pass --gpu_ids to map ranks explicitly (e.g. --gpu_ids " in message and "\n" not in message
    assert "--gpus-per-task=1" in message


def test_the_example_mapping_is_one_the_check_accepts():
    with pytest.raises(ConfigError) as error:
        _check([], 4, 4, 2)
    example = str(error.value).split("--gpu_ids ")[2].split(";")[0]
    assert example == "0,1,0,1"
    _check(["--gpu_ids", example], 4, 4, 2)


@pytest.mark.parametrize("world,local,count", [
    (3, 3, 3),                              # a GPU per process
    (3, 3, 8),
    (6, 3, 3),                              # two nodes of 3 processes, 3 GPUs each: the count is per node
])
def test_enough_shared_gpus_give_each_local_process_its_own(world, local, count):
    config = _check(["--n_clients", "5"], world, local, count)
    taken = _devices_taken(config, world, local, count)
    assert len(set(taken)) == local and all(0 <= index < count for index in taken)


def test_an_explicit_mapping_is_the_users_choice():
    config = _check(["--gpu_ids", "0,0,0"], 3, 3, 1)
    assert _devices_taken(config, 3, 3, 1) == [0, 0, 0]


@pytest.mark.parametrize("count", [1, 2])
def test_gpus_bound_per_task_pass_when_each_process_sees_one(count):
    """srun --gpus-per-task: 4 ranks on a node, each seeing only its own GPU(s), each takes its index 0 or 1."""
    config = _check(["--n_clients", "7"], 8, 4, count, bound=True)
    taken = _devices_taken(config, 8, 4, count)
    assert all(0 <= index < count for index in taken)
    with pytest.raises(ConfigError, match="sees no GPU, though srun bound GPUs per task"):
        _check(["--n_clients", "7"], 8, 4, 0, bound=True)


def test_shared_gpus_are_still_counted_when_not_bound_per_task():
    with pytest.raises(ConfigError, match="runs 4 processes on this node but it has 1 GPU"):
        _check(["--n_clients", "7"], 8, 4, 1, bound=False)


def test_on_cpu_no_device_is_read_and_the_world_passes(monkeypatch):
    """--on_cuda False: preflight touches neither torch.cuda nor the binding, and validate_world accepts
    3 local processes without a GPU."""
    def unexpected():
        raise AssertionError("read on CPU")
    monkeypatch.setattr(preflight, "_cuda_available", unexpected)
    monkeypatch.setattr(preflight, "_cuda_device_count", unexpected)
    config = parse_config([])
    devices = preflight._devices(config, 3, 3)
    assert devices == (False, 0, False)
    assert validate_world(config, 3, 3, *devices) is None
    with pytest.raises(ConfigError, match="CUDA is not available"):
        validate_world(parse_config(["--on_cuda", "True"]), 3, 3, *devices)
