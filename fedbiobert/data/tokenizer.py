"""Tokenizers for pre-training: loading a given WordPiece vocab or saved tokenizer folder,
or training one on the corpus (WordPiece for BERT, byte-level BPE for RoBERTa) and caching
it under ``<cache_dir>/tokenizers/<key>`` so every process and later run reuses it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast, RobertaTokenizerFast

from fedbiobert.atomic import atomic_directory
from fedbiobert.data.corpus import corpus_fingerprint, read_documents

logger = logging.getLogger(__name__)

ARCHITECTURES = ("bert", "roberta")
# Bump when the training recipe changes so stale cached tokenizers are not reused.
TOKENIZER_FORMAT_VERSION = 1
# Large enough that documents are never reported as "too long": blocks are cut by the packer.
MODEL_MAX_LENGTH = 10**9
MIN_VOCAB_SIZE = 300  # byte-level BPE needs its 256-byte alphabet plus special tokens
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_TRAINING_BATCH_DOCS = 1000


def build_tokenizer(
    arch: str,
    tokenizer_path: str | None,
    corpus_files: list[Path],
    cache_dir: Path,
    vocab_size: int = 30522,
) -> PreTrainedTokenizerFast:
    """Load the tokenizer at ``tokenizer_path`` or train (and cache) one on the corpus."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch '{arch}' is not supported (accepted: {', '.join(ARCHITECTURES)})")
    if tokenizer_path is not None:
        tokenizer = _load_given_tokenizer(Path(tokenizer_path))
    else:
        tokenizer = _load_or_train_cached(arch, list(corpus_files), Path(cache_dir), vocab_size)
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def load_tokenizer(tokenizer_path: str | Path) -> PreTrainedTokenizerFast:
    """A given WordPiece vocab .txt or saved tokenizer folder (never trained; used downstream)."""
    tokenizer = _load_given_tokenizer(Path(tokenizer_path))
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def check_tokenizer(tokenizer_path: str) -> None:
    """Load a given tokenizer once, so a bad path or a vocab without its special tokens fails before
    any process group forms (about 0.1 s for a 31k-token vocab)."""
    _load_given_tokenizer(Path(tokenizer_path))


def _load_given_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    accepted = "accepted: a WordPiece vocab .txt file or a folder written by save_pretrained"
    if path.is_file():
        if path.suffix.lower() != ".txt":
            raise ValueError(f"tokenizer_path '{path}' is not a .txt vocab file ({accepted})")
        return _load_wordpiece_vocab(path)
    if path.is_dir():
        return _load_tokenizer_folder(path)
    raise ValueError(f"tokenizer_path '{path}' does not exist ({accepted})")


def _load_wordpiece_vocab(path: Path) -> PreTrainedTokenizerFast:
    try:
        tokens = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"vocab file '{path}' is not valid UTF-8: byte offset {error.start} "
                         "(accepted: a UTF-8 WordPiece vocab, one token per line)") from None
    if tokens and tokens[-1] == "":
        tokens.pop()  # trailing newline; other empty lines are real (SciBERT's vocab has one)
    vocab = {token.rstrip("\r"): index for index, token in enumerate(tokens)}
    missing = [token for token in BERT_SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(
            f"vocab file '{path}' lacks special token(s) {' '.join(missing)} "
            f"(accepted: a WordPiece vocab containing {' '.join(BERT_SPECIAL_TOKENS)})"
        )
    # transformers 5 silently ignores `vocab_file=` in BertTokenizerFast(...) and builds a
    # 5-token vocab, so the vocab is passed as a dict instead.
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    logger.info("loaded WordPiece vocab %s (%d tokens)", path, len(tokenizer))
    return tokenizer


def _load_tokenizer_folder(folder: Path) -> PreTrainedTokenizerFast:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"tokenizer folder '{folder}' could not be loaded ({first_line}) "
            "(accepted: a folder written by save_pretrained)"
        ) from None
    _check_special_tokens(tokenizer, folder)
    logger.info("loaded tokenizer from %s (%d tokens)", folder, len(tokenizer))
    return tokenizer


def _check_special_tokens(tokenizer: PreTrainedTokenizerFast, source: Path) -> None:
    missing = [
        role
        for role, token_id in (
            ("pad", tokenizer.pad_token_id),
            ("mask", tokenizer.mask_token_id),
            ("cls/bos", block_start_id(tokenizer)),
            ("sep/eos", block_end_id(tokenizer)),
        )
        if token_id is None
    ]
    if missing:
        raise ValueError(
            f"tokenizer at '{source}' has no {', '.join(missing)} token "
            "(accepted: a tokenizer with pad, mask, cls/bos and sep/eos tokens)"
        )


def block_start_id(tokenizer: PreTrainedTokenizerFast) -> int | None:
    """Id opening every packed block: [CLS] for BERT, <s> for RoBERTa."""
    return tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id


def block_end_id(tokenizer: PreTrainedTokenizerFast) -> int | None:
    """Id closing blocks and separating documents: [SEP] for BERT, </s> for RoBERTa."""
    return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id


def tokenizer_cache_key(arch: str, vocab_size: int, corpus_files: list[Path]) -> str:
    """Cache folder name of the tokenizer trained for (arch, vocab_size, corpus)."""
    identity = {
        "arch": arch,
        "vocab_size": vocab_size,
        "corpus": corpus_fingerprint(corpus_files),
        "format": TOKENIZER_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _load_or_train_cached(
    arch: str, corpus_files: list[Path], cache_dir: Path, vocab_size: int
) -> PreTrainedTokenizerFast:
    if not corpus_files:
        raise ValueError("corpus_files is empty (accepted: at least one corpus file to train a tokenizer on)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size!r} is too small (accepted: an int >= {MIN_VOCAB_SIZE})")
    target = cache_dir / "tokenizers" / tokenizer_cache_key(arch, vocab_size, corpus_files)
    if _is_saved_tokenizer(target):
        logger.info("reusing tokenizer at %s", target)
    else:
        _train_and_save(arch, corpus_files, vocab_size, target)
    # Always load from disk, so a fresh and a reused tokenizer are byte-identical
    # (same tokenizer_fingerprint, hence the same token cache key).
    return _load_cached_folder(arch, target)


def _is_saved_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file()


def _load_cached_folder(arch: str, folder: Path) -> PreTrainedTokenizerFast:
    tokenizer_class = BertTokenizerFast if arch == "bert" else RobertaTokenizerFast
    tokenizer = tokenizer_class.from_pretrained(str(folder), local_files_only=True)
    _check_special_tokens(tokenizer, folder)
    return tokenizer


def _train_and_save(arch: str, corpus_files: list[Path], vocab_size: int, target: Path) -> None:
    started = time.perf_counter()
    logger.info("training %s tokenizer (vocab %d) on %d file(s)", arch, vocab_size, len(corpus_files))
    backend = _train_backend(arch, corpus_files, vocab_size)
    tokenizer = _wrap_backend(arch, backend)
    _save_atomically(tokenizer, target)
    logger.info(
        "trained tokenizer with %d tokens in %.1fs, saved at %s",
        len(tokenizer), time.perf_counter() - started, target,
    )


def _train_backend(arch: str, corpus_files: list[Path], vocab_size: int) -> Tokenizer:
    if arch == "bert":
        backend, trainer = _new_wordpiece(vocab_size)
    else:
        backend, trainer = _new_byte_level_bpe(vocab_size)
    backend.train_from_iterator(_document_batches(corpus_files), trainer=trainer)
    _set_post_processor(arch, backend)
    return backend


def _new_wordpiece(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # min_frequency/limit_alphabet follow BertWordPieceTokenizer: rare symbols stay [UNK]
    # instead of spending vocab slots.
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, limit_alphabet=1000,
        special_tokens=list(BERT_SPECIAL_TOKENS), continuing_subword_prefix="##", show_progress=False,
    )
    return backend, trainer


def _new_byte_level_bpe(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(ROBERTA_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    return backend, trainer


def _set_post_processor(arch: str, backend: Tokenizer) -> None:
    if arch == "bert":
        cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    else:
        backend.post_processor = processors.RobertaProcessing(
            ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")),
            trim_offsets=True, add_prefix_space=False,
        )


def _document_batches(corpus_files: list[Path]) -> Iterator[list[str]]:
    for file in corpus_files:
        texts = [document.text for document in read_documents(file, label_suffix=None)]
        for start in range(0, len(texts), _TRAINING_BATCH_DOCS):
            yield texts[start:start + _TRAINING_BATCH_DOCS]


def _wrap_backend(arch: str, backend: Tokenizer) -> PreTrainedTokenizerFast:
    if arch == "bert":
        return BertTokenizerFast(tokenizer_object=backend, do_lower_case=True)
    return RobertaTokenizerFast(tokenizer_object=backend)


def _save_atomically(tokenizer: PreTrainedTokenizerFast, target: Path) -> None:
    """Save into a temp folder beside ``target`` and rename it into place.

    Concurrent processes may train the same tokenizer; the first rename wins and the
    others discard their copy, so readers never see a half-written folder.
    """
    try:
        # replace=False: a folder another process put there first is kept (the rename fails); 0755
        # whatever the umask, as the cache is meant to be shared
        with atomic_directory(target, replace=False, permissions=0o755, parents=True) as staging:
            tokenizer.save_pretrained(str(staging))
    except OSError:
        if not _is_saved_tokenizer(target):
            raise
        logger.info("tokenizer at %s was written by another process meanwhile; using it", target)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Stable hex sha256 of a tokenizer's vocab, merges, pipeline and special tokens.

    Padding/truncation settings are left out: transformers toggles them on the backend per
    call, and they do not change which ids a text maps to.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("padding", None)
    state.pop("truncation", None)
    specials = sorted(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids))
    payload = json.dumps({"backend": state, "specials": specials}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
