"""Learning-rate schedule: linear warm-up then polynomial (power 2) decay, on hand-computed points."""
import pytest
import torch
from transformers import get_polynomial_decay_schedule_with_warmup

from fedbiobert.optim import Schedule, build_optimizer, learning_rate


def test_hand_computed_points():
    # 100 steps, 10 warm-up, peak 1.0, end 0.0
    assert learning_rate(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert learning_rate(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert learning_rate(10, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert learning_rate(55, 100, 10, 1.0, 0.0) == pytest.approx(0.25)  # (1 - 45/90)^2
    assert learning_rate(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_matches_transformers_polynomial_schedule_after_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=5e-4)
    reference = get_polynomial_decay_schedule_with_warmup(optimizer, 6, 60, lr_end=1e-6, power=2.0)
    schedule = Schedule(60, 0.1, 5e-4, 1e-6)
    for step in range(60):
        expected = optimizer.param_groups[0]["lr"]
        if step >= 6:  # HF's warm-up starts at 0; ours starts at peak/warmup (a step at lr 0 is wasted)
            assert schedule(step) == pytest.approx(expected, rel=1e-6)
        optimizer.step()
        reference.step()


def test_no_weight_decay_on_bias_and_layernorm_and_tied_weights_once():
    layer = torch.nn.Linear(2, 2)
    norm = torch.nn.LayerNorm(2)
    named = [("dense.weight", layer.weight), ("dense.bias", layer.bias), ("LayerNorm.weight", norm.weight),
             ("tied.weight", layer.weight)]
    optimizer = build_optimizer(named, weight_decay=0.01)
    decay, no_decay = optimizer.param_groups
    assert decay["params"] == [layer.weight] and decay["weight_decay"] == 0.01
    assert no_decay["params"] == [layer.bias, norm.weight] and no_decay["weight_decay"] == 0.0


def test_body_factor_freezes_the_body_then_scales_it():
    schedule = Schedule(100, 0.0, 1e-3, 0.0, head_warmup_steps=5, body_lr_ratio=0.25)
    assert [schedule.body_factor(step) for step in (0, 4, 5, 99)] == [0.0, 0.0, 0.25, 0.25]
    assert Schedule(100, 0.0, 1e-3, 0.0).body_factor(0) == 1.0  # the default: one rate for all


def test_heads_train_alone_during_head_warmup_then_the_body_at_its_ratio():
    """A split client part: its aux head and final head (`cls.`) move from step 0, its embeddings and
    layers stay bit-identical for head_warmup_steps steps, then move at body_lr_ratio x the heads' rate.
    The aux decoder IS the word embedding: a body parameter, frozen with the body."""
    from transformers import BertConfig

    from fedbiobert.algorithms.base import Stepper
    from fedbiobert.model import build_full_model, split_model
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, tie_word_embeddings=False)
    client, _ = split_model(build_full_model(config, seed=0), 1, "client")
    schedule = Schedule(10, 0.0, 1e-2, 1e-2, head_warmup_steps=2, body_lr_ratio=0.5)
    stepper = Stepper(client, schedule, weight_decay=0.01, max_grad_norm=None)
    body = {name: param.detach().clone() for name, param in client.named_parameters() if "head" not in name
            and not name.startswith("cls.")}
    heads = {name: param.detach().clone() for name, param in client.named_parameters() if name not in body}
    ids = torch.randint(5, 50, (2, 8))
    for step in range(3):
        hidden = client(ids)
        loss = client.aux_logits(hidden.reshape(-1, 16)).logsumexp(-1).mean() + \
            client.final_logits(hidden.reshape(-1, 16)).logsumexp(-1).mean()
        stepper.backward(loss)
        stepper.step(step)
        current = dict(client.named_parameters())
        moved_body = [name for name in body if not torch.equal(current[name], body[name])]
        if step < 2:
            assert moved_body == [], f"step {step}: {moved_body[:3]}"
            assert any(not torch.equal(current[name], heads[name]) for name in heads)
    assert "bert.embeddings.word_embeddings.weight" in moved_body and len(moved_body) == len(body)
    body_groups = [group for group in stepper.optimizer.param_groups if not group["head"]]
    assert body_groups and all(group["lr"] == pytest.approx(0.5e-2) for group in body_groups)
    assert all(group["lr"] == pytest.approx(1e-2) for group in stepper.optimizer.param_groups if group["head"])


def test_fine_tuning_uses_the_same_builder_with_its_own_adamw_settings():
    """One builder: fine-tuning gets the same no-decay groups, with AdamW's default betas and eps and
    its peak rate (pre-training: betas (0.9, 0.98), eps 1e-6, the rate set each step)."""
    from transformers import BertConfig, BertForTokenClassification

    from fedbiobert.finetune.train import Hyper, finetune_optimizer
    model = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32, num_labels=3))
    optimizer = finetune_optimizer(model, Hyper(lr=3e-5, weight_decay=0.02))
    decay, no_decay = optimizer.param_groups
    names = {id(param): name for name, param in model.named_parameters()}
    assert all(not (names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]) for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.02, 0.0)
    assert all((group["lr"], group["betas"], group["eps"]) == (3e-5, (0.9, 0.999), 1e-8) for group in (decay, no_decay))
    pretraining = build_optimizer(model.named_parameters(), weight_decay=0.01)
    assert all((group["lr"], group["betas"], group["eps"]) == (0.0, (0.9, 0.98), 1e-6)
               for group in pretraining.param_groups)
