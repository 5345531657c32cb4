"""Algorithm registry: name -> Algorithm class. One line per algorithm."""
from __future__ import annotations

from fedbiobert.algorithms.base import Algorithm, ClientTrainer, ServerTrainer, StepResult
from fedbiobert.algorithms.fedavg import Centralized, FedAvg
from fedbiobert.algorithms.fedbert import FedBERT
from fedbiobert.algorithms.fedbiobert import FedBioBERT

REGISTRY: dict[str, type[Algorithm]] = {
    FedBioBERT.name: FedBioBERT,
    FedBERT.name: FedBERT,
    FedAvg.name: FedAvg,
    Centralized.name: Centralized,
}


def build_algorithm(session) -> Algorithm:
    name = session.config.algorithm
    if name not in REGISTRY:
        raise ValueError(f"--algorithm '{name}' is unknown (accepted: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](session)


__all__ = ["Algorithm", "ClientTrainer", "ServerTrainer", "StepResult", "REGISTRY", "build_algorithm"]
