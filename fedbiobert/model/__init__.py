"""The model package: building, splitting and joining BERT/RoBERTa masked-LMs, and the MLM loss.

Re-exports the public API of build.py, split.py and mlm.py; knows nothing about ranks
or torch.distributed.
"""

from fedbiobert.model.build import (
    ARCHS,
    ModelSpec,
    arch_of,
    build_config,
    build_full_model,
    load_full_model,
    num_layers_of,
    untie_output_embeddings,
    untied_config,
)
from fedbiobert.model.mlm import (
    IGNORE_INDEX,
    full_mlm_loss,
    gather_masked,
    masked_positions,
    masked_targets,
    mlm_loss,
)
from fedbiobert.model.recompute import keep_forward
from fedbiobert.model.stash import stash_weights
from fedbiobert.model.split import (
    HEAD_PLACEMENTS,
    AuxMLMHead,
    aliased_keys,
    load_unique_state,
    unique_state,
    ClientModel,
    ServerModel,
    build_joined_model,
    client_state_keys,
    join_state_dicts,
    load_joined_state,
    split_model,
)

__all__ = [
    "ARCHS", "HEAD_PLACEMENTS", "stash_weights", "keep_forward", "aliased_keys", "load_unique_state", "unique_state",
    "IGNORE_INDEX", "AuxMLMHead", "ClientModel", "ModelSpec", "ServerModel",
    "arch_of", "build_config", "build_full_model", "build_joined_model", "client_state_keys",
    "full_mlm_loss", "gather_masked", "join_state_dicts", "load_full_model",
    "load_joined_state",
    "masked_positions", "masked_targets", "mlm_loss", "num_layers_of", "split_model",
    "untie_output_embeddings", "untied_config",
]
