"""Federated fine-tuning: one silo retraces centralized training step for step; several silos give
the engine's sample-weighted FedAvg of the silos' models."""
from __future__ import annotations

import copy

import pytest
import torch

from fedbiobert.aggregate import weighted_average
from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.finetune.data_ner import Sentence, encode_ner
from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings
from fedbiobert.finetune.federated import FederatedOptimisation, build_topology, train_federated, train_silo
from fedbiobert.finetune.modeling import RandomModelSize, build_random
from fedbiobert.finetune.train import Hyper, train_centralized
from tests.support.finetune_helpers import write_vocab

LABELS = ["O", "B-Disease", "I-Disease"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    vocab = write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    tokenizer = load_tokenizer(vocab)
    sentences = [Sentence(["the", "patient", "has", "breast", "cancer", "."][: 3 + index % 4],
                          ["O", "O", "O", "B-Disease", "I-Disease", "O"][: 3 + index % 4]) for index in range(20)]
    examples = encode_ner(sentences, tokenizer, LABELS, max_len=16)
    model, _ = build_random(RandomModelSize("bert", 16, 1, 2, 32), "ner", len(LABELS), str(vocab), 16, seed=0)
    return model, examples, tokenizer.pad_token_id


def test_one_silo_equals_centralized_step_for_step(setup):
    model, examples, pad_id = setup
    hyper = Hyper(lr=1e-3, batch_size=4)
    central, federated = copy.deepcopy(model), copy.deepcopy(model)
    central_losses = train_centralized(central, examples, hyper, epochs=2, seed=5, pad_id=pad_id)
    topology = build_topology(n_clients=1, participation_ratio=1.0, seed=5, world_size=1)
    federated_losses = train_federated(federated, [examples], hyper, rounds=1, local_epochs=2, seed=5,
                                       pad_id=pad_id, topology=topology)
    assert len(central_losses) == 10
    assert federated_losses == central_losses  # every step: same batch, dropout and learning rate
    for (name, mine), (_, theirs) in zip(federated.state_dict().items(), central.state_dict().items()):
        torch.testing.assert_close(mine, theirs, msg=name)
    assert not torch.equal(central.classifier.weight, model.classifier.weight)  # it did train


def test_two_silos_average_weighted_by_examples(setup):
    model, examples, pad_id = setup
    hyper = Hyper(lr=1e-3, batch_size=4)
    silos = [examples[:6], examples[6:]]
    federated = copy.deepcopy(model)
    topology = build_topology(n_clients=2, participation_ratio=1.0, seed=1, world_size=1)
    train_federated(federated, silos, hyper, rounds=1, local_epochs=1, seed=1, pad_id=pad_id, topology=topology)
    trained = []
    for silo_id, silo in enumerate(silos):
        local = copy.deepcopy(model)
        train_silo(local, silo, hyper, rounds=1, local_epochs=1, round_idx=0, seed=1, silo_id=silo_id,
                   pad_id=pad_id)
        trained.append(local.state_dict())
    expected = weighted_average(trained, [6.0, 14.0])
    for name, value in expected.items():
        torch.testing.assert_close(federated.state_dict()[name], value, msg=name)


def test_participation_samples_with_the_engine_topology():
    topology = build_topology(n_clients=8, participation_ratio=0.25, seed=0, world_size=1)
    assert len(topology.silos_for(0, 0)) == 2


def test_a_server_optimizer_steps_from_the_round_start_towards_the_fedavg_average(setup):
    """--server_optimizer fedadam: the new model is FedAdam's step from the round-start weights with the
    FedAvg average as its target (pseudo-gradient = start - average); fedavgm at lr 1 without momentum
    is FedAvg bit for bit."""
    model, examples, pad_id = setup
    hyper = Hyper(lr=1e-3, batch_size=4)
    silos = [examples[:6], examples[6:]]
    topology = build_topology(n_clients=2, participation_ratio=1.0, seed=1, world_size=1)
    runs = {}
    for name, settings in {"fedavg": ServerOptimizerSettings("fedavg"),
                           "fedavgm": ServerOptimizerSettings("fedavgm", lr=1.0, momentum=0.0),
                           "fedadam": ServerOptimizerSettings("fedadam", lr=0.01)}.items():
        runs[name] = copy.deepcopy(model)
        train_federated(runs[name], silos, hyper, rounds=1, local_epochs=1, seed=1, pad_id=pad_id,
                        topology=topology, optimisation=FederatedOptimisation(settings))
    average = runs["fedavg"].state_dict()
    assert all(torch.equal(runs["fedavgm"].state_dict()[key], value) for key, value in average.items())
    start = model.state_dict()
    floating = {key: value for key, value in average.items() if value.is_floating_point()}
    expected = ServerOptimizer(ServerOptimizerSettings("fedadam", lr=0.01)).step(start, floating)
    for name, value in expected.items():
        assert torch.equal(runs["fedadam"].state_dict()[name], value), name
    assert not torch.equal(runs["fedadam"].classifier.weight, runs["fedavg"].classifier.weight)
