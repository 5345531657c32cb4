"""FedBioBERT: SplitFed pre-training of biomedical BERT/RoBERTa over torch.distributed."""
__version__ = "0.1.0"
