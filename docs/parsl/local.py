# A Parsl engine on the agent's own node: one block of two workers, everything on loopback.
# engine = "parsl", parsl_config = "local.py", workers = 2
from parsl.providers import LocalProvider

provider = LocalProvider(
    init_blocks=1,
    min_blocks=1,
    max_blocks=1,
    # Run before the workers start: make fxbroker importable by them (a venv, a module).
    worker_init="",
)

executor = {
    "address": "127.0.0.1",  # the workers reach the interchange on loopback
    "loopback_address": "127.0.0.1",  # the agent reaches it so too (Parsl's default)
    "max_workers_per_node": 2,
}
