"""The model package: building, splitting and joining BERT/RoBERTa masked-LMs, and the MLM loss.

Re-exports the public API of build.py, split.py, mlm.py, recompute.py and stash.py; knows nothing
about ranks or torch.distributed. The re-exports are lazy (PEP 562): a name imports its module on
first use, so code that needs only the MLM loss (or an algorithm's rules, read by the option checks
before any work) does not pay for importing transformers.
"""
import importlib

_MODULE_OF = {  # public name -> the module that defines it
    **dict.fromkeys(("ARCHS", "ModelSpec", "arch_of", "build_config", "build_full_model", "load_full_model",
                     "num_layers_of", "untie_output_embeddings", "untied_config", "tie_decoder",
                     "decoder_is_embeddings_copy", "decoder_is_tied", "output_embedding_key"),
                    "fedbiobert.model.build"),
    **dict.fromkeys(("IGNORE_INDEX", "full_mlm_loss", "gather_masked", "masked_positions", "masked_targets",
                     "mlm_loss"), "fedbiobert.model.mlm"),
    **dict.fromkeys(("AuxMLMHead", "ClientModel", "HEAD_PLACEMENTS", "ServerModel", "aliased_keys",
                     "build_joined_model", "client_state_keys", "join_state_dicts", "load_joined_state",
                     "load_unique_state", "split_model", "unique_state"), "fedbiobert.model.split"),
    "keep_forward": "fedbiobert.model.recompute",
    "stash_weights": "fedbiobert.model.stash",
}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'fedbiobert.model' has no attribute '{name}'")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "ARCHS", "HEAD_PLACEMENTS", "stash_weights", "keep_forward", "aliased_keys", "load_unique_state", "unique_state",
    "IGNORE_INDEX", "AuxMLMHead", "ClientModel", "ModelSpec", "ServerModel",
    "arch_of", "build_config", "build_full_model", "build_joined_model", "client_state_keys",
    "full_mlm_loss", "gather_masked", "join_state_dicts", "load_full_model",
    "load_joined_state",
    "masked_positions", "masked_targets", "mlm_loss", "num_layers_of", "split_model",
    "untie_output_embeddings", "untied_config", "tie_decoder", "decoder_is_embeddings_copy", "decoder_is_tied",
    "output_embedding_key",
]
