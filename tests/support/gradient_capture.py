"""A split client and server on two real processes, with the gradients a step produces captured for
comparison with full back-propagation (test_baselines, test_precision)."""
import copy

import torch

from fedbiobert.algorithms.base import Stepper
from fedbiobert.comm.groups import shutdown
from fedbiobert.comm.messages import Control, Kind, Message
from fedbiobert.lora import merged_state
from fedbiobert.model import build_joined_model, full_mlm_loss, gather_masked, masked_positions, mlm_loss
from tests.support.split_setup import build_split, two_process_channel

STEPS = 3


def gradients(module) -> dict[str, torch.Tensor]:
    return {name: param.grad.detach().clone() for name, param in module.named_parameters() if param.grad is not None}


def _aux_onlygradients(client, batch) -> dict[str, torch.Tensor]:
    reference = copy.deepcopy(client)
    reference.zero_grad(set_to_none=True)
    positions = masked_positions(batch.labels)
    hidden = reference(batch.input_ids, batch.attention_mask)
    mlm_loss(reference.aux_logits(gather_masked(hidden, positions)), batch.labels.reshape(-1)[positions]).backward()
    return gradients(reference)


def reference_update(trainer, module, batch) -> dict[str, torch.Tensor]:
    """The trunk's weights after this step had it been driven by the auxiliary loss alone: a copy of
    the module and of the trunk optimizer's state, aux-only gradients, clipped and stepped alike."""
    reference = copy.deepcopy(module)
    reference.zero_grad(set_to_none=True)
    positions = masked_positions(batch.labels)
    hidden = reference(batch.input_ids, batch.attention_mask)
    mlm_loss(reference.aux_logits(gather_masked(hidden, positions)), batch.labels.reshape(-1)[positions]).backward()
    stepper = trainer.stepper
    twin = Stepper(reference, stepper.schedule, 0.01, stepper.max_grad_norm, skip=reference.final_head)
    twin.optimizer.load_state_dict(copy.deepcopy(stepper.optimizer.state_dict()))
    twin.step(trainer.current_step)
    return {name: param.detach().clone() for name, param in reference.named_parameters() if id(param) in
            {id(p) for p in twin.parameters}}


def serve(algorithm, server, channel):
    trainer = algorithm.server_trainer(server, channel, 0)
    while (message := channel.recv(None)).kind is not Kind.CONTROL:
        trainer.handle(message)
    trainer.finish()
    channel.flush()


def capture_split_gradients(rank, world_size, options, capture_step, corpus_dir, cache_dir, out_dir):
    """A `run_processes` worker: rank 0 serves, rank 1 trains one silo of STEPS batches and saves to
    out_dir/grads.pt the client's gradients at `capture_step`, those of the auxiliary loss alone, the
    full back-propagation through the joined model (first batch) and the bytes sent."""
    algorithm, client, server, batches, hf_config = build_split(corpus_dir, cache_dir, STEPS, **options)
    client.eval(), server.eval()  # no dropout: gradients are comparable
    initial = {"client": copy.deepcopy(client.state_dict()), "server": copy.deepcopy(server.state_dict())}
    channel = two_process_channel()
    if rank == 0:
        serve(algorithm, server, channel)
    else:
        trainer = algorithm.client_trainer(client, channel, 0, silo_id=0, round_idx=0)
        captured, current = {}, {}

        def capture(module):
            if current["step"] == capture_step and "grads" not in captured:
                captured["grads"] = gradients(module)
                captured["aux_only"] = _aux_onlygradients(module, current["batch"])
                if hasattr(trainer, "final_head_stepper"):
                    trainer.current_step = step
                    captured["expected_update"] = reference_update(trainer, module, current["batch"])
            elif current["step"] == capture_step + 1 and "expected_update" in captured:
                captured["applied_update"] = {name: param.detach().clone() for name, param in
                                              module.named_parameters() if name in captured["expected_update"]}

        def capture_final_head(module):
            captured.setdefault("final_head_grads", []).append(gradients(module))

        trainer.stepper.before_step.append(capture)
        if getattr(trainer, "final_head_stepper", None) is not None:
            trainer.final_head_stepper.before_step.append(capture_final_head)
        for step, batch in enumerate(batches):
            current.update(step=step, batch=batch)
            trainer.step(batch, step)
        trainer.finish()
        channel.send(Message(Kind.CONTROL, control=Control.ROUND_DONE), 0)
        channel.flush()
        lora = algorithm.config.lora  # the joined model is a stock one: adapters merged (zero B: the base)
        joined = build_joined_model(hf_config, *(merged_state(initial[part], lora.scaling) if lora else initial[part]
                                                 for part in ("client", "server")))
        first = batches[0]
        full_mlm_loss(joined, first.input_ids, first.attention_mask, first.labels).backward()
        captured["full_backprop"] = gradients(joined)
        captured["bytes"] = channel.bytes.as_dict()
        captured["masked_rows"] = [len(masked_positions(batch.labels)) for batch in batches]
        captured["batch_shape"] = tuple(first.input_ids.shape)
        captured["client_before"], captured["client_after"] = initial["client"], client.state_dict()
        torch.save(captured, out_dir / "grads.pt")
    shutdown()
