"""Vocabulary shared by every layer of the code base, defined once: the model families, where the
final MLM head may run, the silo partition schemes, and the label of positions that are not predicted.
Imports nothing of the package, so config, data and model can all import it."""

ARCHS = ("bert", "roberta")
HEAD_PLACEMENTS = ("client", "server")
PARTITION_SCHEMES = ("random", "by_file", "dirichlet", "label")
IGNORE_INDEX = -100  # label of positions that are not predicted (HF / CrossEntropyLoss convention)
# Server optimisers on averaged parts (server_optimizer.py): FedAvg, and FedOpt's three (Reddi et al. 2021).
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
# --server_lr by --server_optimizer: FedAdam/FedYogi's 0.03 measured on the quick preset
# (docs/federated-optimisation.md; 0.1 diverged); FedAvgM at 1 is FedAvg plus momentum (Hsu et al. 2019).
DEFAULT_SERVER_LR = {"fedavg": 1.0, "fedavgm": 1.0, "fedadam": 0.03, "fedyogi": 0.03}
# How a silo's change since the round started travels in the round's model exchange (codec.py).
EXCHANGE_DTYPES = ("fp32", "bf16", "fp16", "int8")
