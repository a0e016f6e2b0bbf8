# A Parsl engine on a PBS Pro cluster: up to 2 blocks of 4 nodes, one worker per GPU (4 a
# node), mpiexec starts a worker pool on each node of a block.
# engine = "parsl", parsl_config = "pbs.py", workers = 32  (2 blocks x 4 nodes x 4 GPUs)
from parsl.launchers import MpiExecLauncher
from parsl.providers import PBSProProvider

provider = PBSProProvider(
    account="my-project",
    queue="workq",
    nodes_per_block=4,
    cpus_per_node=64,
    select_options="ngpus=4",
    init_blocks=1,
    min_blocks=0,
    max_blocks=2,
    walltime="02:00:00",
    launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1"),
    scheduler_options="#PBS -l filesystems=home",
    worker_init="module load conda; conda activate fxbroker",
)

executor = {
    # The IP address the compute nodes reach the agent's node at, which Parsl's interchange
    # binds (parsl.addresses finds it: address_by_interface("ib0") for a fabric's, say).
    "address": "10.10.0.1",
    "available_accelerators": 4,  # a worker per GPU, CUDA_VISIBLE_DEVICES set for each
    "cores_per_worker": 16,
}
