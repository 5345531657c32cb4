"""One fine-tuning run: read the task data, build the model, train (centralized or federated) with
early stopping on the dev split, and score the test split. `run_once` returns the result record
that the CLI writes as JSON; `fine_tune` also returns the trained model and the training losses.

With `--probe` the encoder is frozen and only the task head trains (modeling.freeze_encoder); the
encoder then runs in eval mode while training (train.training_mode) and federated rounds average
the head alone, so the encoder ends bit-identical to the one loaded. The encoder's features are
computed once per invocation (probe.FeatureCache: every epoch, round and seed, dev and test) and the
head trains on them (probe.head_on_features), centralized and federated alike.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbiobert.finetune import data_classification as cls_data
from fedbiobert.finetune import data_ner as ner_data
from fedbiobert.finetune.errors import InputError
from fedbiobert.finetune.fedlora import (LORA_DEFAULT_LR, add_adapters, build_aggregation, communication_record,
                                         lora_settings)
from fedbiobert.finetune.federated import FederatedOptimisation, ProcessContext, build_topology, train_federated
from fedbiobert.finetune.metrics import classification_scores, ner_scores
from fedbiobert.finetune.modeling import RandomModelSize, build_random, freeze_encoder, load_pretrained
from fedbiobert.finetune.probe import FeatureCache, head_on_features, supports_cached_head
from fedbiobert.finetune.silos import split_silos
from fedbiobert.finetune.train import EarlyStopping, Hyper, predict, train_centralized

logger = logging.getLogger(__name__)

PROBE_LR = 1e-3  # default --lr of a probe: a freshly initialised head alone needs a far larger step
# Private switch: False makes a probe re-run its frozen encoder on every batch, as before the feature
# cache (probe.py); the tests compare the two paths with it.
_CACHE_PROBE_FEATURES = True


@dataclass
class TaskData:
    task: str
    labels: list[str]       # label values (NER tags or class values), index = label id
    names: list[str]        # printable class names (classification) or tags
    train: list
    dev: list
    test: list


def detect_task(data: Path) -> str:
    if (data / "train.tsv").is_file():
        return "ner"
    if (data / "train.csv").is_file():
        return "classification"
    raise InputError(f"--data '{data}' has neither train.tsv (NER) nor train.csv (classification)")


def load_task_data(task: str, data: Path, max_train: int | None, max_test: int | None, dev_ratio: float) -> TaskData:
    """Read and check the splits; cap them; carve a dev split from train when there is none."""
    if not data.is_dir():
        raise InputError(f"--data '{data}' is not a folder")
    reader = ner_data if task == "ner" else cls_data
    splits = (ner_data.read_ner_folder if task == "ner" else cls_data.read_classification_folder)(data)
    train = splits["train"][:max_train] if max_train else splits["train"]
    labels = reader.label_list(train)
    check = ner_data.check_known_tags if task == "ner" else cls_data.check_known_labels
    for split in ("dev", "test"):
        if split in splits:
            check(splits[split], labels, splits[split + "_path"], split)
    dev = splits.get("dev")
    if dev is None:
        train, dev = _carve_dev(train, dev_ratio)
    test = splits["test"][:max_test] if max_test else splits["test"]
    names = [splits.get("names", {}).get(label, label) for label in labels]
    dev = dev[:max_test] if max_test else dev
    logger.info("%s data %s: %d train / %d dev / %d test, %d labels", task, data, len(train), len(dev),
                len(test), len(labels))
    return TaskData(task, labels, names, train, dev, test)


def _carve_dev(train: list, dev_ratio: float) -> tuple[list, list]:
    order = np.random.default_rng(0).permutation(len(train))
    num_dev = max(1, int(round(dev_ratio * len(train))))
    if num_dev >= len(train):
        raise InputError(f"the training split has {len(train)} example(s): too few to hold out a dev split")
    dev_set = set(order[:num_dev].tolist())
    return ([item for index, item in enumerate(train) if index not in dev_set],
            [item for index, item in enumerate(train) if index in dev_set])


def encode(task_data: TaskData, items: list, tokenizer, max_len: int) -> list:
    if task_data.task == "ner":
        return ner_data.encode_ner(items, tokenizer, task_data.labels, max_len)
    return cls_data.encode_classification(items, tokenizer, task_data.labels, max_len)


def score(task_data: TaskData, items: list, encoded: list, predictions: list) -> dict:
    if task_data.task == "ner":
        predicted = ner_data.merge_predictions(encoded, predictions, items, task_data.labels)
        return ner_scores([sentence.tags for sentence in items], predicted)
    return classification_scores([example.labels for example in encoded], predictions, task_data.names)


def main_score(scores: dict) -> float:
    return scores["f1"] if "f1" in scores else scores["macro_f1"]


def build_model(options, task_data: TaskData, seed: int):
    if str(options.model).lower() == "none":
        size = RandomModelSize(options.arch, options.hidden_size, options.num_hidden_layers,
                               options.num_attention_heads, options.intermediate_size)
        return build_random(size, task_data.task, len(task_data.labels), options.tokenizer, options.max_len, seed)
    return load_pretrained(options.model, task_data.task, len(task_data.labels), options.tokenizer, options.max_len,
                           seed)


def prepare_model(options, task_data: TaskData, seed: int):
    """(model, tokenizer, averaged_keys): the state keys FedAvg averages, None (all), a probe's head or
    fedlora's adapters (and head)."""
    model, tokenizer = build_model(options, task_data, seed)
    if options.algorithm == "fedlora":
        return model, tokenizer, add_adapters(model, options, seed)
    return model, tokenizer, (freeze_encoder(model) if options.probe else None)


def silo_keys(task_data: TaskData, encoded: list) -> list:
    """The label-skew key of each training example (see silos.py)."""
    if task_data.task == "classification":
        return [example.labels for example in encoded]
    return [next((task_data.labels[label][2:] for label in example.labels if label > 0), "O") for example in encoded]


@dataclass
class Outcome:
    model: object           # the trained model (best dev weights restored on rank 0)
    record: dict            # the result record ({} on ranks other than 0)
    losses: list[float]     # the loss of every training step of this process


def run_once(options, task_data: TaskData, seed: int, context: ProcessContext = ProcessContext(),
             cache: FeatureCache | None = None) -> dict:
    """Fine-tune with `seed` and return the result record (scores on the test split)."""
    return fine_tune(options, task_data, seed, context, cache).record


def fine_tune(options, task_data: TaskData, seed: int, context: ProcessContext = ProcessContext(),
              cache: FeatureCache | None = None) -> Outcome:
    """`cache`: a probe's encoder features, shared by the seeds of one invocation (default: this run's own)."""
    model, tokenizer, averaged_keys = prepare_model(options, task_data, seed)
    pad_id = tokenizer.pad_token_id
    encoded = {name: encode(task_data, items, tokenizer, options.max_len)
               for name, items in (("train", task_data.train), ("dev", task_data.dev), ("test", task_data.test))}
    hyper = Hyper(lr=options.lr or default_lr(model, options.probe, options.algorithm),
                  batch_size=options.batch_size,
                  warmup_ratio=options.warmup_ratio, weight_decay=options.weight_decay,
                  group_by_length=options.group_by_length)
    cached = bool(options.probe) and _CACHE_PROBE_FEATURES and supports_cached_head(model)
    if options.probe and not cached:
        logger.info("probe: the encoder of %s runs on every batch (uncached)", type(model).__name__)
    inputs = dict(encoded)  # what the model reads: the encoded examples or, for a cached probe, their features
    if cached:
        needed = ("train", "dev", "test") if context.rank == 0 else ("train",)  # rank 0 alone evaluates
        cache = cache if cache is not None else FeatureCache()
        inputs.update(cache.examples(model, {name: encoded[name] for name in needed}, pad_id, hyper.eval_batch_size))
    with head_on_features(model) if cached else nullcontext():
        return _train_and_score(options, task_data, seed, context, model, averaged_keys, pad_id, hyper,
                                encoded, inputs)


def _train_and_score(options, task_data, seed, context, model, averaged_keys, pad_id, hyper, encoded,
                     inputs) -> Outcome:
    train, dev, test = inputs["train"], inputs.get("dev"), inputs.get("test")
    stopper = EarlyStopping(options.patience)
    dev_history = []  # every epoch's (round's) dev scores: the learning curve (experiments/hilmkil.py reads it)

    def evaluate_dev(index: int) -> bool:
        stop = None
        if context.rank == 0:
            dev_scores = score(task_data, task_data.dev, encoded["dev"], predict(model, dev, hyper, pad_id))
            dev_history.append({key: value for key, value in dev_scores.items() if not isinstance(value, dict)})
            dev_score = main_score(dev_scores)
            logger.info("dev %s after %s %d: %.4f", "f1" if task_data.task == "ner" else "macro_f1",
                        "epoch" if options.mode == "centralized" else "round", index + 1, dev_score)
            stop = stopper.update(dev_score, model, index)
        return context.broadcast(stop)

    started = time.perf_counter()
    communication = {}
    if options.mode == "centralized":
        losses = train_centralized(model, train, hyper, options.epochs, seed, pad_id, evaluate_dev)
    else:
        aggregation = build_aggregation(options, averaged_keys, context, dev, pad_id, hyper, seed)
        losses = _train_federated(options, task_data, model, train, hyper, seed, pad_id, context, evaluate_dev,
                                  averaged_keys, aggregation)
        lora = options.algorithm == "fedlora"
        communication = communication_record(aggregation, model.state_dict(),
                                             lora_settings(options).scaling if lora else None)
    train_seconds = time.perf_counter() - started
    if context.rank != 0:
        return Outcome(model, {}, losses)
    stopper.restore(model)
    scores = score(task_data, task_data.test, encoded["test"], predict(model, test, hyper, pad_id))
    record = {"seed": seed, "lr": hyper.lr, "train_seconds": round(train_seconds, 3), "steps": len(losses),
              "best_dev": stopper.best_score, "best_epoch_or_round": stopper.best_index + 1,
              "train_examples": len(train), "test_examples": len(task_data.test), "dev_history": dev_history,
              "trained_parameters": sum(param.numel() for param in model.parameters() if param.requires_grad),
              **communication, **scores}
    return Outcome(model, record, losses)


def _train_federated(options, task_data, model, train, hyper, seed, pad_id, context, on_round_end,
                     averaged_keys, aggregation):
    keys = silo_keys(task_data, train)
    parts = split_silos(keys, options.n_clients, options.split, seed, options.dirichlet_alpha)
    silos = [[train[index] for index in part] for part in parts]
    logger.info("%d silos (%s split): examples per silo %s", len(silos), options.split, [len(s) for s in silos])
    topology = build_topology(options.n_clients, options.participation_ratio, seed, context.world_size)
    return train_federated(model, silos, hyper, options.rounds, options.local_epochs, seed, pad_id, topology,
                           context, on_round_end, averaged_keys, FederatedOptimisation.from_options(options),
                           aggregation)


def default_lr(model, probe: bool = False, algorithm: str = "fedavg") -> float:
    """5e-5 for small models, 2e-5 for base-sized and larger (hidden >= 768), as in the papers;
    PROBE_LR for a probe; LORA_DEFAULT_LR for LoRA adapters."""
    if probe:
        return PROBE_LR
    if algorithm == "fedlora":
        return LORA_DEFAULT_LR
    return 2e-5 if model.config.hidden_size >= 768 else 5e-5
