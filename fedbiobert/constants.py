"""Vocabulary shared by every layer of the code base, defined once: the model families, where the
final MLM head may run, the silo partition schemes, and the label of positions that are not predicted.
Imports nothing of the package, so config, data and model can all import it."""

ARCHS = ("bert", "roberta")
HEAD_PLACEMENTS = ("client", "server")
PARTITION_SCHEMES = ("random", "by_file", "dirichlet", "label")
IGNORE_INDEX = -100  # label of positions that are not predicted (HF / CrossEntropyLoss convention)
# Server optimisers on averaged parts (server_optimizer.py): FedAvg, and FedOpt's three (Reddi et al. 2021).
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
