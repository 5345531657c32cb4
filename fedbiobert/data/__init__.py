"""Data pipeline of FedBioBERT: corpus reading, tokenizers, the packed token cache, MLM
masking, validation/client partitions and batch loading. Knows client indices only."""
from fedbiobert.data.corpus import (
    TEXT_SUFFIXES, Document, check_corpus_files, corpus_fingerprint, list_corpus_files, read_documents,
)
from fedbiobert.data.blocks import BlockStore
from fedbiobert.data.loader import Batch, BatchLoader, silo_batches, validation_batches
from fedbiobert.data.masking import MaskingSpec, mask_tokens
from fedbiobert.data.partition import PARTITION_SCHEMES, partition, split_validation, validation_sample
from fedbiobert.data.token_cache import TokenizedCorpus, load_or_build_token_cache
from fedbiobert.data.tokenizer import build_tokenizer, check_tokenizer, tokenizer_fingerprint

__all__ = [
    "Batch",
    "BatchLoader",
    "BlockStore",
    "Document",
    "MaskingSpec",
    "PARTITION_SCHEMES",
    "TEXT_SUFFIXES",
    "TokenizedCorpus",
    "build_tokenizer",
    "check_corpus_files",
    "check_tokenizer",
    "silo_batches",
    "corpus_fingerprint",
    "list_corpus_files",
    "load_or_build_token_cache",
    "mask_tokens",
    "partition",
    "read_documents",
    "split_validation",
    "tokenizer_fingerprint",
    "validation_batches",
    "validation_sample",
]
