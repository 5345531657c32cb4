"""Round checkpoints (resume) and round exports (standard HF models), written atomically.

Layout in `--output_dir`:

    checkpoint/state.pt          everything needed to resume after the last complete round
    checkpoint/round{k}.pt       the same after round k (--from_checkpoint_round k); state.pt is a hard
                                 link to the latest, so the two take the disk space of one
    round{k}/                    HF `save_pretrained` export of the joined model + tokenizer after
                                 round k: a plain model folder, no training state

Resume states and exports are written with fedbiobert/atomic.py, durably (fsynced): a resume state is
a single file written under a temp name then renamed over the old one, so a crash mid-write leaves the
previous checkpoint intact. A round folder is filled under a temp name and swapped in when complete (the old
folder is renamed aside first and deleted last, so there is always a complete round{k}/).
`--keep_exports N` deletes the exports and round states of rounds before the last N. Every file gets
the same permissions (0666 less the umask).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from fedbiobert.atomic import atomic_directory, atomic_write, default_mode, link_atomically, write_json_atomically

logger = logging.getLogger(__name__)

# 2: tensors and plain data only (loadable with weights_only=True), cumulative run_seconds.
STATE_FORMAT = 2
STATE_FILE = "state.pt"
# Options that must match between the run that wrote a checkpoint and the run resuming from it: each
# changes the model's shape, which data each silo holds (--data and --tot_files pick the corpus files),
# which silos are sampled, how they are averaged (--fl_aggregate) or what the validation loss measures,
# so a resumed run with another value would silently be a different run.
RESUME_MUST_MATCH = (
    "algorithm", "arch", "num_client_encoder", "num_server_encoder", "head_placement", "server_output",
    "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "max_len",
    "n_clients", "participation_ratio", "num_servers", "fedavg_embedding_head", "fedavg_server_model",
    "fl_aggregate", "manual_seed", "client_seeds", "data", "tot_files", "partition_data", "dirichlet_alpha",
    "label_suffix", "val_ratio", "val_blocks", "mlm_probability", "server_optimizer",
    "tie_decoders", "lora_rank", "lora_alpha", "lora_targets", "lora_train_embeddings",
)
# Not --precision: master weights are fp32 in every precision, so a checkpoint means the same whatever
# the compute dtype that trained it (a run may resume in another precision; see fedbiobert/precision.py).
# Not --tokenizer nor --init_from as paths: what they hold is compared by content instead (the
# checkpoint's "fingerprints", see data_fingerprints), so a moved but identical vocab.txt or model folder
# is accepted and an edited one at the same path is refused. The corpus is compared the same way.
# Options that may change on resume but change the learning-rate schedule: a warning, not an error.
RESUME_SHOULD_MATCH = ("n_comm_rounds", "n_local_rounds", "num_batch", "lr", "end_lr", "warmup_ratio",
                       "head_warmup_steps", "body_lr_ratio")
# Everything else may change on resume without a word: where the data lives (--data_dir: the corpus is
# compared by file names and content, and the token cache is keyed by content, so moved files give the
# same blocks), devices and transport (--on_cuda, --gpu_ids, --comm_timeout, the emulated link), output
# and logging options, --batch_size and the optimizer's other settings (a legitimate change of the
# training recipe).
# Keys of --init_from's config.json left out of its fingerprint: they say where and with which library
# version the folder was saved, not what the model is.
_VOLATILE_MODEL_KEYS = ("_name_or_path", "transformers_version")


def round_dir(output_dir: str | Path, round_number: int) -> Path:
    return Path(output_dir) / f"round{round_number}"


def resume_state_path(output_dir: str | Path, round_number: int | None = None) -> Path:
    if round_number is None:
        return Path(output_dir) / "checkpoint" / STATE_FILE
    return Path(output_dir) / "checkpoint" / f"round{round_number}.pt"


def save_resume_state(output_dir: str | Path, state: dict[str, Any]) -> Path:
    """checkpoint/round{k}.pt, then checkpoint/state.pt as a hard link to it (a copy where links fail)."""
    round_path = resume_state_path(output_dir, state["round"])
    with atomic_write(round_path, "wb", durable=True, parents=True) as stream:
        torch.save({"format": STATE_FORMAT, **state}, stream)
    path = resume_state_path(output_dir)
    link_atomically(round_path, path)
    logger.info("checkpoint of round %d written to %s", state["round"], path)
    return path


def load_resume_for(config) -> dict | None:
    """The state a run resumes from (every rank reads it itself), or None for a fresh run. Checks the
    options, then the corpus, --init_from and a given --tokenizer by content: all before any process
    group forms, so a changed one costs no tokenization. A tokenizer trained on the corpus exists only
    once the session is built: check_resume_vocabulary checks it then."""
    if not (config.from_checkpoint or config.from_checkpoint_round is not None):
        return None
    state = load_resume_state(config.output_dir, config.from_checkpoint_round, config_record(config))
    path = resume_state_path(config.output_dir, config.from_checkpoint_round)
    if state.get("fingerprints") is None:
        logger.warning("checkpoint '%s' predates content fingerprints: resuming without checking that its "
                       "corpus, vocabulary and --init_from model are unchanged", path)
        return state
    check_fingerprints(path, state["fingerprints"], data_fingerprints(config, _given_tokenizer(config)), config)
    return state


def check_resume_vocabulary(config, resume: dict | None, tokenizer) -> None:
    """After build_session, before any training step, on every rank: the vocabulary this run really
    has against the checkpoint's. Every rank holds the same tokenizer, so all of them agree."""
    if resume is None or resume.get("fingerprints") is None:
        return  # a fresh run, or an older checkpoint (load_resume_for warned about it)
    path = resume_state_path(config.output_dir, config.from_checkpoint_round)
    check_fingerprints(path, resume["fingerprints"], vocabulary_fingerprint(tokenizer), config)


def config_record(config) -> dict[str, Any]:
    """The options a checkpoint records (and a resume compares): every option, plus the resolved
    number of server processes (--num_device may be left to its per-algorithm default)."""
    return {**dataclasses.asdict(config), "num_servers": config.num_servers}


def load_resume_state(output_dir: str | Path, round_number: int | None, config_values: dict[str, Any]) -> dict:
    """Load and check a resume state. ValueError naming the file if it is corrupt or incompatible."""
    path = resume_state_path(output_dir, round_number)
    accepted = "(accepted: a state written by a FedBioBERT run; move it away to start over)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the very end
        raise ValueError(f"checkpoint '{path}' is damaged: {path.stat().st_size} bytes that are not a complete "
                         f"torch.save archive (truncated or overwritten?) {accepted}")
    state = _load_plain_state(path, accepted)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"checkpoint '{path}' is not a FedBioBERT state of format {STATE_FORMAT} {accepted}")
    for key in RESUME_MUST_MATCH:
        saved = state["config"].get(key)
        if _comparable(key, saved) != _comparable(key, config_values[key]):
            raise ValueError(f"checkpoint '{path}' was trained with --{key} {saved}, but this run has --{key} "
                             f"{config_values[key]} (accepted: the same value; it shapes the model, the silos' "
                             "data or the validation set)")
    for key in RESUME_SHOULD_MATCH:
        if state["config"].get(key) != config_values[key]:
            logger.warning("resuming with --%s %s (checkpoint: %s): the learning-rate schedule changes",
                           key, config_values[key], state["config"].get(key))
    if state["round"] >= config_values["n_comm_rounds"]:
        raise ValueError(f"checkpoint '{path}' already completed round {state['round']} of --n_comm_rounds "
                         f"{config_values['n_comm_rounds']}: nothing left to train (raise --n_comm_rounds)")
    return state


def data_fingerprints(config, tokenizer=None) -> dict[str, Any]:
    """What a checkpoint records of the run's inputs by content (plain data: loadable with
    weights_only): each corpus file's name and sha256, the --init_from model's identity, and with a
    tokenizer its vocabulary. Paths are left out on purpose: data may move between invocations."""
    fingerprints = {"corpus": corpus_digests(config), "init_from": model_fingerprint(config.init_from)}
    return {**fingerprints, **(vocabulary_fingerprint(tokenizer) if tokenizer is not None else {})}


def corpus_digests(config) -> list[list[str]]:
    """[name, sha256] of every corpus file the run reads, in corpus order, each followed by its label
    sidecar (--partition_data label reads it). The same content hash as the token cache's key."""
    from fedbiobert.config import corpus_files_for
    from fedbiobert.data.corpus import file_sha256, sidecar_path
    files = []
    for file in corpus_files_for(config):
        files += [file, *filter(None, [sidecar_path(file, config.label_suffix)])]
    return [[file.name, file_sha256(file)] for file in files]


def vocabulary_fingerprint(tokenizer) -> dict[str, Any]:
    """sha256 of the token -> id mapping (what a checkpoint's embedding rows mean), and its size for
    the message; the file it came from plays no part, so a copied vocab.txt is the same vocabulary."""
    mapping = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {"vocabulary": hashlib.sha256(mapping.encode("utf-8")).hexdigest(), "vocabulary_size": len(tokenizer)}


def model_fingerprint(folder: str | None) -> str | None:
    """--init_from's identity: its config.json (the model's shape) and its weight files' names and sizes.
    The weights are not hashed: a resume takes every weight from the checkpoint, and hashing gigabytes on
    every rank at every resume would buy no safety."""
    if folder is None:
        return None
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for key in _VOLATILE_MODEL_KEYS:
        config.pop(key, None)
    weights = [[path.name, path.stat().st_size] for path in sorted(folder.iterdir())
               if path.suffix in (".safetensors", ".bin") or path.name.endswith(".index.json")]
    identity = json.dumps({"config": config, "weights": weights}, sort_keys=True)
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def check_fingerprints(path: Path, saved: dict, current: dict, config) -> None:
    """ValueError (one line) for the first input whose content differs from the checkpoint's. Only the
    keys both hold are compared (`current` holds what is known at the time of the call)."""
    differs = {"corpus": _corpus_difference, "vocabulary": _vocabulary_difference, "init_from": _model_difference}
    for key, difference in differs.items():
        if key in saved and key in current and saved[key] != current[key]:
            what, accepted = difference(saved, current, config)
            raise ValueError(f"checkpoint '{path}' {what} (accepted: {accepted}; or move the checkpoint away "
                             "to start over)")


def _corpus_difference(saved: dict, current: dict, config) -> tuple[str, str]:
    then, now = dict(map(tuple, saved["corpus"])), dict(map(tuple, current["corpus"]))
    changed = [name for name in now if name in then and then[name] != now[name]]
    added, missing = sorted(now.keys() - then.keys()), sorted(then.keys() - now.keys())
    if changed:
        detail = f"its file '{changed[0]}' has other content now"
    elif added:
        detail = f"'{added[0]}' was not part of it"
    elif missing:
        detail = f"its file '{missing[0]}' is missing now"
    else:
        detail = "its files are read in another order"
    return (f"was trained on another corpus than --data_dir '{config.data_dir}' gives: {detail}",
            "the same corpus files, by name and content, wherever --data_dir puts them")


def _vocabulary_difference(saved: dict, current: dict, config) -> tuple[str, str]:
    source = f"--tokenizer '{config.tokenizer}'" if config.tokenizer else "the tokenizer trained on the corpus"
    size_then, size_now = saved.get("vocabulary_size"), current["vocabulary_size"]
    detail = (f"{size_then} tokens then, {size_now} now" if size_then != size_now else
              f"{size_now} tokens as before, but other tokens or other ids")
    return (f"was trained with another vocabulary than {source} holds ({detail})",
            "the same token -> id mapping, wherever its file lives")


def _model_difference(saved: dict, current: dict, config) -> tuple[str, str]:
    accepted = "the model folder it started from, wherever it lives"
    if saved["init_from"] is None:
        return f"was trained from random weights, but this run has --init_from '{config.init_from}'", accepted
    if current["init_from"] is None:
        return "was trained from an --init_from model, but this run has no --init_from", accepted
    return (f"was trained from another --init_from model than '{config.init_from}' (its config.json or weight "
            "files differ)", accepted)


def _given_tokenizer(config):
    """The tokenizer a run loads from --tokenizer (a warm start's own, adopted by preflight), or None when
    it trains one on the corpus (known only once the session is built). validate_paths has already
    loaded it once, so a bad path has been reported before this."""
    if config.tokenizer is None:
        return None
    from fedbiobert.data.tokenizer import load_tokenizer
    return load_tokenizer(config.tokenizer)


def _comparable(key: str, value: Any) -> Any:
    """An option's value as it acts: --fl_aggregate 'scheme=fedavg' and the default
    'scheme=federated_average,weighting=samples' average alike, and --data's words select files in any
    order and case."""
    if key == "fl_aggregate" and isinstance(value, str):
        from fedbiobert.config import ConfigError, parse_fl_aggregate
        try:
            return parse_fl_aggregate(value)["weighting"]  # FedAvg is the only scheme; its aliases are equal
        except ConfigError:
            return value
    if key == "server_optimizer" and value is None:  # a checkpoint from before server optimisers: FedAvg
        return "fedavg"
    if key.startswith("lora_") and value is None:  # a checkpoint from before LoRA: the defaults (rank 0: off)
        from fedbiobert.config import Config
        return Config.__dataclass_fields__[key].default
    if key == "data" and isinstance(value, str):
        return sorted({word for word in value.lower().split("-") if word})
    return value


def _load_plain_state(path: Path, accepted: str) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only. A pickle that names
    any other object (a crafted state.pt can run arbitrary code on load) is refused before anything
    in it is executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(f"checkpoint '{path}' holds objects other than tensors and plain data{what}: refused "
                         f"without loading it, since loading it could run code {accepted}") from None
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ValueError(f"checkpoint '{path}' is unreadable ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:120]}) {accepted}") from None


def export_round(output_dir: str | Path, round_number: int, model, tokenizer) -> Path:
    """Write round{k}/: the joined HF model and its tokenizer (the round's resume state is
    checkpoint/round{k}.pt, written by save_resume_state)."""
    final = round_dir(output_dir, round_number)
    # An old round{k}/ (a round re-run after a resume) is set aside and deleted only once the new one is
    # in place (atomic_directory's replace): a crash leaves a complete round folder, never neither.
    with atomic_directory(final, durable=True, parents=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _set_default_modes(staging)
    return final


def _set_default_modes(folder: Path) -> None:
    """Give every file of an export the mode a plain open() would (0666 less the umask): safetensors
    writes model.safetensors 0600 while the tokenizer files get 0644."""
    mode = default_mode()
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def prune_rounds(output_dir: str | Path, latest_round: int, keep: int | None) -> list[int]:
    """--keep_exports: delete round{k}/ and checkpoint/round{k}.pt for k <= latest_round - keep.
    Returns the rounds deleted."""
    if keep is None:
        return []
    deleted = []
    for round_number in range(1, latest_round - keep + 1):
        export, state = round_dir(output_dir, round_number), resume_state_path(output_dir, round_number)
        if export.exists() or state.exists():
            shutil.rmtree(export, ignore_errors=True)
            state.unlink(missing_ok=True)
            deleted.append(round_number)
    return deleted


def prepare_output_dir(config) -> None:
    """Rank 0, before training: create the output dir and write the resolved config.json."""
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output / "config.json", dataclasses.asdict(config), sort_keys=True, end="")


def has_checkpoint(output_dir: str | Path) -> bool:
    return resume_state_path(output_dir).is_file()
