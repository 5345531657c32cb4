"""`--algorithm fedlora`: federated fine-tuning of LoRA adapters on a frozen pre-trained model
(Fed-MedLoRA; with `--aggregation adaptive`, Fed-MedLoRA+; see aggregation.py).

Each silo loads the same base model itself (it is never sent); adapters go on the encoder layers'
`--lora_targets` (fedbiobert/lora.py) and only they, and the task head unless `--lora_exchange_head
False`, train and cross the wire. With the head not exchanged it is not trained either: it stays
the seed's initialisation, identical on every silo, so the one global model is well defined.

`build_aggregation` picks the round's rule for every federated run (fedavg too: `weighted` is
FedAvg, `adaptive` weights any exchanged model by its validation loss).
"""
from __future__ import annotations

import logging

from fedbiobert.aggregate import averaged_keys
from fedbiobert.finetune.aggregation import AdaptiveAggregation, Aggregation, ExactAggregation, validation_loss
from fedbiobert.finetune.batching import eval_batches
from fedbiobert.finetune.errors import InputError
from fedbiobert.finetune.federated import FederatedOptimisation
from fedbiobert.finetune.modeling import head_parameter_names
from fedbiobert.config.lora import LoraSettings, check_lora, check_lora_values, parse_targets
from fedbiobert.lora import add_lora, layer_linears_of_model, merged_state, state_nbytes
from fedbiobert.seeding import derive_seed
from fedbiobert.server_optimizer import ServerOptimizer

logger = logging.getLogger(__name__)

ALGORITHMS = ("fedavg", "fedlora")
# adapters start at zero and are few: measured on NCBI-disease (docs/lora.md), 5e-4 learnt nothing in 3 rounds
LORA_DEFAULT_LR = 2e-3


def lora_settings(options) -> LoraSettings:
    try:
        targets = parse_targets(options.lora_targets)
    except ValueError as error:
        raise InputError(f"--lora_targets: {error}") from None
    return LoraSettings(options.lora_rank, options.lora_alpha, options.lora_dropout, targets)


def check_algorithm_options(options) -> None:
    """One line for an option that does not fit --algorithm/--aggregation (before any model is read)."""
    lora = options.algorithm == "fedlora"
    if lora and options.mode != "federated":
        raise InputError(f"--algorithm fedlora with --mode {options.mode} (accepted: --mode federated)")
    if lora and str(options.model).lower() == "none":
        raise InputError("--algorithm fedlora with --model none: LoRA adapts a pre-trained model (accepted: an HF "
                         "folder, e.g. models/minilm-l6 or a pre-training export)")
    if lora and options.probe:
        raise InputError("--algorithm fedlora with --probe (accepted: one of them: a probe trains the head alone)")
    if options.aggregation == "exact" and not lora:
        raise InputError(f"--aggregation exact with --algorithm {options.algorithm} (accepted: --algorithm fedlora; "
                         "exact averages the adapters' products B A)")
    if options.aggregation == "exact" and options.server_optimizer != "fedavg":
        raise InputError(f"--aggregation exact with --server_optimizer {options.server_optimizer} (accepted: "
                         "fedavg: the averaged update is folded into the base, there is no pseudo-gradient to step)")
    if options.aggregation == "exact" and options.keep_silo_optimizer:
        raise InputError("--aggregation exact with --keep_silo_optimizer True (accepted: False: the adapters "
                         "restart every round, kept moments would belong to the old ones)")
    if lora:
        try:
            check_lora_values(lora_settings(options))
        except ValueError as error:
            raise InputError(str(error)) from None


def add_adapters(model, options, seed: int) -> list[str]:
    """LoRA on `model` as the options say; the exchanged keys (adapters, and the head if exchanged)."""
    settings = lora_settings(options)
    try:
        check_lora(settings, layer_linears_of_model(model))
    except ValueError as error:
        raise InputError(str(error)) from None
    head = set(head_parameter_names(model)) if options.lora_exchange_head else set()
    keys = add_lora(model, settings, derive_seed(seed, "lora init"), trainable=lambda name: name in head)
    logger.info("fedlora: rank %d, alpha %g on %s; %d trainable parameters (%s)", settings.rank, settings.alpha,
                ",".join(settings.targets), sum(p.numel() for p in model.parameters() if p.requires_grad),
                "adapters and head" if head else "adapters only")
    return keys


def build_aggregation(options, keys: list[str] | None, context, dev_inputs, pad_id: int, hyper,
                      seed: int) -> Aggregation:
    server = ServerOptimizer(FederatedOptimisation.from_options(options).server)
    if options.aggregation == "exact":
        return ExactAggregation(keys, server, context.sum_across, lora_settings(options).scaling,
                                derive_seed(seed, "lora init"))
    if options.aggregation == "adaptive":
        def score(model) -> float:
            return validation_loss(model, eval_batches(dev_inputs, hyper.eval_batch_size, pad_id)[1])
        return AdaptiveAggregation(keys, server, context.sum_across, score, options.n_clients)
    return Aggregation(keys, server, context.sum_across)


def communication_record(aggregation: Aggregation, global_state: dict, scaling: float | None) -> dict:
    """The record's bytes: per round as sent, and beside them what full-model FedAvg of the same
    model would send (every floating tensor of the model as exported, adapters merged)."""
    rounds = aggregation.rounds
    if not rounds:
        return {}
    full_state = merged_state(global_state, scaling) if scaling is not None else global_state
    full = state_nbytes(full_state, averaged_keys(full_state))
    first = rounds[0]
    return {"aggregation": aggregation.name, "bytes_up_per_round": first["bytes_up_per_round"],
            "bytes_down_per_round": first["bytes_down_per_round"], "bytes_up_per_silo": first["bytes_up_per_silo"],
            "bytes_down_per_silo": first["bytes_down_per_silo"], "full_model_bytes_per_silo": full,
            "communication_vs_full_model": round((first["bytes_up_per_silo"] + first["bytes_down_per_silo"])
                                                 / (2 * full), 6),
            "rounds_log": rounds}
