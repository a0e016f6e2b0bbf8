# A Parsl engine on Kubernetes: up to 8 pods (blocks) of 4 workers, from an image that has
# fxbroker and Parsl installed. The agent runs in the cluster, in the same namespace; the
# agent's node needs the `kubernetes` package (pip install kubernetes) and a kube config or
# a service account that may create pods.
# engine = "parsl", parsl_config = "kubernetes.py", workers = 32  (8 pods x 4)
from parsl.addresses import address_by_hostname
from parsl.providers import KubernetesProvider

provider = KubernetesProvider(
    image="registry.example.org/lab/fxbroker-worker:1.0",
    namespace="fxbroker",
    init_blocks=1,
    min_blocks=0,
    max_blocks=8,
    init_cpu=4,
    max_cpu=4,
    init_mem="8Gi",
    max_mem="8Gi",
    worker_init="",
)

executor = {
    # The agent pod's IP address, which the worker pods reach and the interchange binds.
    "address": address_by_hostname(),
    "max_workers_per_node": 4,
}
