# A Parsl engine on a Slurm cluster: up to 4 blocks of 2 nodes, 32 workers a node, one srun
# per block starts a worker pool on each node. The agent runs on the login node.
# engine = "parsl", parsl_config = "slurm.py", workers = 256  (4 blocks x 2 nodes x 32)
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

provider = SlurmProvider(
    partition="compute",
    account="my-project",
    nodes_per_block=2,
    init_blocks=1,
    min_blocks=0,
    max_blocks=4,
    walltime="04:00:00",  # each block's (batch job's) walltime, not a task's
    launcher=SrunLauncher(),
    scheduler_options="#SBATCH --constraint=cpu",
    worker_init="module load python/3.11; source ~/fxbroker-venv/bin/activate",
)

executor = {
    # The IP address the compute nodes reach the agent's node at, which Parsl's interchange
    # binds (parsl.addresses finds it: address_by_interface("ib0") for a fabric's, say).
    "address": "10.10.0.1",
    "max_workers_per_node": 32,
    "cores_per_worker": 1,
}
