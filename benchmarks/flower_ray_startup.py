"""Start-up cost of Flower's Ray simulation engine: 3 virtual SuperNodes, 2 rounds of FedAvg on a
1000-parameter numpy model (no training), timed end to end. Runs in its own environment, because
``flwr[simulation]`` brings Ray, which privmed does not install:

    python3 -m venv /tmp/rayenv && /tmp/rayenv/bin/pip install torch==2.13.0 "flwr[simulation]==1.42.0"
    /tmp/rayenv/bin/python benchmarks/flower_ray_startup.py
"""
import time

t0 = time.time()
import numpy as np  # noqa: E402
from flwr.client import NumPyClient  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters  # noqa: E402
from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

t_import = time.time() - t0

class C(NumPyClient):
    def fit(self, parameters, config):
        return [p + 0.01 for p in parameters], 10, {}

def client_fn(context: Context):
    return C().to_client()

rounds = []
class S(FedAvg):
    def aggregate_fit(self, r, results, failures):
        rounds.append(time.time())
        return super().aggregate_fit(r, results, failures)

def server_fn(context: Context):
    s = S(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=3,
          initial_parameters=ndarrays_to_parameters([np.zeros(1000, np.float32)]))
    return ServerAppComponents(strategy=s, config=ServerConfig(num_rounds=2))

t1 = time.time()
run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
               num_supernodes=3, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
t_end = time.time()
print(f"import {t_import:.1f} s; start -> first round aggregated {rounds[0] - t1:.1f} s; "
      f"second round {rounds[1] - rounds[0]:.2f} s; whole run_simulation {t_end - t1:.1f} s")
