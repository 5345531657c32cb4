"""Algorithm registry: name -> Algorithm class. One line per algorithm (see base.py, "Adding an algorithm").

The config checks read an algorithm's rules from here (`algorithm_class`), importing this package only
when they need them: it imports torch, transformers and fedbiobert.config, and config must stay
importable without them (see `Config.rules`)."""
from __future__ import annotations

import importlib
import os
import sys

from fedbiobert.algorithms.base import Algorithm, ClientTrainer, ServerTrainer, SplitAlgorithm, StepResult
from fedbiobert.algorithms.fedavg import Centralized, FedAvg
from fedbiobert.algorithms.fedbert import FedBERT
from fedbiobert.algorithms.fedbiobert import FedBioBERT
from fedbiobert.config import ConfigError

REGISTRY: dict[str, type[Algorithm]] = {
    FedBioBERT.name: FedBioBERT,
    FedBERT.name: FedBERT,
    FedAvg.name: FedAvg,
    Centralized.name: Centralized,
}


def register(algorithm: type[Algorithm]) -> type[Algorithm]:
    """Add an algorithm defined outside this package to the registry (usable as a class decorator).
    Registering the same class again does nothing; another class under a taken name is refused."""
    if not (isinstance(algorithm, type) and issubclass(algorithm, Algorithm)) or not algorithm.name:
        raise TypeError(f"register({algorithm!r}): accepted is an Algorithm subclass with a non-empty `name`")
    registered = REGISTRY.get(algorithm.name)
    if registered is not None and _dotted(registered) != _dotted(algorithm):
        raise ValueError(f"register({algorithm.__qualname__}): the name '{algorithm.name}' is taken by "
                         f"{_dotted(registered)} (accepted: a name not in "
                         f"{', '.join(REGISTRY)})")
    REGISTRY[algorithm.name] = algorithm
    return algorithm


def _dotted(algorithm: type) -> str:
    return f"{algorithm.__module__}.{algorithm.__qualname__}"


def import_algorithm_module(module: str) -> None:
    """--algorithm_module: import the module that registers an algorithm of the user's. The working
    directory is searched too (last), as `python -m` does, since the launcher and `torchrun run.py` do not."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"--algorithm_module '{module}' cannot be imported ({error}) (accepted: a dotted module "
                          "path importable from the working directory or PYTHONPATH)") from None


def algorithm_class(name: str, module: str | None = None) -> type[Algorithm]:
    """The class registered as --algorithm NAME, once --algorithm_module MODULE (if any) is imported."""
    if module:
        import_algorithm_module(module)
    if name not in REGISTRY:
        raise ConfigError(f"--algorithm '{name}' is not supported (accepted: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def build_algorithm(session) -> Algorithm:
    config = session.config
    return algorithm_class(config.algorithm, config.algorithm_module)(session)


__all__ = ["Algorithm", "ClientTrainer", "ServerTrainer", "SplitAlgorithm", "StepResult", "REGISTRY",
           "algorithm_class", "build_algorithm", "import_algorithm_module", "register"]
