"""The launch environment of every launcher, read by the one function that reads it
(`launch_info_from_env`): what each launcher really sets, rank for rank, and the address and port
the ranks meet at. Variables are those the launchers set (DeepSpeed's from deepspeed/launcher/launch.py,
SLURM's from srun's documentation; tests/processes/test_cluster_*.py check them against the real launchers)."""
import pytest

from fedbiobert.comm.groups import agree_master_addr, backend_for
from fedbiobert.comm.launch_env import (DEFAULT_PORT, LaunchError, LaunchInfo, expand_nodelist, gpus_bound_per_task,
                                        job_port, launch_info_from_env, slurm_cpus_per_task,
                                        threads_per_process, usable_cpus)


def test_a_lone_process():
    assert launch_info_from_env({}) == LaunchInfo(0, 1, 0, 1, "single process", "127.0.0.1", DEFAULT_PORT)


def test_torchrun():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node0",
           "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x", "GROUP_RANK": "1"}
    assert launch_info_from_env(env) == LaunchInfo(5, 8, 1, 4, "torchrun", "node0", 29400)


def test_deepspeed_launcher():
    """deepspeed --hostfile: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE (not LOCAL_WORLD_SIZE), CROSS_RANK/SIZE."""
    env = {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_SIZE": "4", "CROSS_RANK": "1",
           "CROSS_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert launch_info_from_env(env) == LaunchInfo(6, 8, 2, 4, "deepspeed", "10.0.0.1", 29500)


def test_openmpi_on_one_node_meets_on_localhost_at_a_port_of_the_job():
    env = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "3", "PMIX_NAMESPACE": "1234567@1"}
    info = launch_info_from_env(env)
    assert info == LaunchInfo(2, 3, 2, 3, "openmpi", "127.0.0.1", job_port(env))
    assert info.master_port != DEFAULT_PORT and 20000 <= info.master_port < 60000
    other_job = launch_info_from_env({**env, "PMIX_NAMESPACE": "7654321@1"})
    assert other_job.master_port != info.master_port  # two jobs on one node do not collide


def test_openmpi_across_nodes_leaves_the_address_to_the_ranks():
    env = {"OMPI_COMM_WORLD_RANK": "4", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    info = launch_info_from_env(env)
    assert (info.rank, info.local_rank, info.local_world_size, info.master_addr) == (4, 0, 4, None)
    assert launch_info_from_env({**env, "MASTER_ADDR": "head"}).master_addr == "head"


def test_mpich_and_intel_mpi():
    env = {"PMI_RANK": "3", "PMI_SIZE": "5", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
           "PMI_KVSNAME": "kvs_4242_0", "MASTER_ADDR": "head"}
    assert launch_info_from_env(env) == LaunchInfo(3, 5, 1, 2, "mpich", "head", job_port(env))


def test_mpi_inside_a_slurm_allocation_uses_the_mpi_ranks():
    """mpirun in an sbatch script: the batch step's SLURM_PROCID=0 is in every rank's environment."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n1",
           "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}
    assert launch_info_from_env(env).rank == 2 and launch_info_from_env(env).launcher == "openmpi"


def test_srun_one_task_per_rank():
    """srun -N3 --ntasks-per-node=... on gpu[01-03,07]: rank 0 is on the first node of the step."""
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "12", "SLURM_STEP_NUM_TASKS": "10", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "3", "SLURM_STEP_TASKS_PER_NODE": "3(x3),1", "SLURM_TASKS_PER_NODE": "3(x4)",
           "SLURM_JOB_NODELIST": "gpu[01-03,07]", "SLURM_JOB_ID": "123456"}
    info = launch_info_from_env(env)
    assert info == LaunchInfo(9, 10, 1, 1, "slurm", "gpu01", job_port(env))
    assert launch_info_from_env({**env, "SLURM_NODEID": "1"}).local_world_size == 3


def test_srun_under_torchrun_is_torchrun():
    """srun + torchrun: srun's task variables stay in the environment; torchrun's RANK is the rank."""
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "RANK": "7", "WORLD_SIZE": "8", "LOCAL_RANK": "3",
           "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu01", "MASTER_PORT": "29500"}
    assert launch_info_from_env(env).rank == 7 and launch_info_from_env(env).launcher == "torchrun"


@pytest.mark.parametrize("nodelist,hosts", [
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("node7", ["node7"]),
    ("a[8-10],login1", ["a8", "a9", "a10", "login1"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),
])
def test_compressed_node_lists(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("env,fragment", [
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[01-02"}, "unclosed '['"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[a-b]"}, "bad range 'a-b'"),
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not a non-negative integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NODEID": "2", "SLURM_TASKS_PER_NODE": "2(x2)"},
     "SLURM_NODEID=2 but the tasks per node '2(x2)' cover 2 node(s)"),
])
def test_a_bad_launch_environment_is_one_line(env, fragment):
    with pytest.raises(LaunchError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        launch_info_from_env(env)


def test_mpi_across_nodes_without_mpi4py_or_master_addr_says_what_to_do():
    try:
        import mpi4py  # noqa: F401
        pytest.skip("mpi4py is installed: the ranks agree on MASTER_ADDR through it "
                    "(tests/processes/test_cluster_mpi.py)")
    except ImportError:
        pass
    launch = LaunchInfo(4, 8, 0, 4, "openmpi", None)
    with pytest.raises(LaunchError, match="MASTER_ADDR is not set: pass it .*or install mpi4py"):
        agree_master_addr(launch)


def test_nccl_on_gpus_gloo_on_cpus_unless_named():
    assert backend_for(True) == "nccl" and backend_for(False) == "gloo"
    assert backend_for(False, "gloo") == "gloo" and backend_for(True, "nccl") == "nccl"


# one srun task per rank, 2 nodes of 4: what srun sets in each task (its input variables stay in the environment)
SRUN_TASK = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[01-02]",
             "SLURM_JOB_ID": "99"}


@pytest.mark.parametrize("extra,bound", [
    ({"SLURM_GPUS_PER_TASK": "1"}, True),                            # srun --gpus-per-task=1
    ({"SLURM_GPUS_PER_TASK": "a100:1"}, True),
    ({"SLURM_GPU_BIND": "map_gpu:0,1,2,3"}, True),                   # srun --gpu-bind=...
    ({"SLURM_GPU_BIND": "verbose,single:1"}, True),
    ({"SLURM_GPUS_PER_TASK": "1", "SLURM_GPU_BIND": "none"}, False),  # binding turned off
    ({"SLURM_GPUS_PER_NODE": "4"}, False),                           # the node's GPUs, shared by its tasks
    ({}, False),
])
def test_gpus_bound_per_task_under_srun(extra, bound):
    assert gpus_bound_per_task(8, 4, {**SRUN_TASK, **extra}) is bound


def test_gpus_are_not_bound_per_rank_for_processes_a_task_starts():
    """torchrun (or fedbiobert-run) inside a task bound to one GPU: its ranks share that task's GPU."""
    env = {**SRUN_TASK, "SLURM_GPUS_PER_TASK": "1"}
    torchrun = {**env, "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert not gpus_bound_per_task(8, 4, torchrun)
    assert not gpus_bound_per_task(4, 4, env)  # fedbiobert-run's own check, for 4 processes it starts
    assert not gpus_bound_per_task(8, 4, {**env, "SLURM_PROCID": "x"})  # unreadable: not bound


def test_cpus_per_task_count_for_srun_tasks_only():
    srun = launch_info_from_env(SRUN_TASK)
    assert slurm_cpus_per_task(srun, {**SRUN_TASK, "SLURM_CPUS_PER_TASK": "8"}) == 8
    assert slurm_cpus_per_task(srun, SRUN_TASK) is None
    torchrun = LaunchInfo(5, 8, 1, 4, "torchrun")  # the agent's --cpus-per-task is shared by its ranks
    assert slurm_cpus_per_task(torchrun, {"SLURM_CPUS_PER_TASK": "8"}) is None


def test_threads_split_the_shared_cpus_or_take_the_tasks_own():
    cpus = usable_cpus()
    assert threads_per_process(1) == cpus and threads_per_process(cpus * 4) == 1
    assert threads_per_process(4, cpus_per_task=1) == 1                # srun -c 1: one CPU of its own
    assert threads_per_process(4, cpus_per_task=cpus + 8) == cpus      # never more than it may run on
