"""Downstream fine-tuning and evaluation: biomedical NER and classification, centralized and federated.

Layout (one concern per module, data flows downward):

    errors.py               InputError: bad input, reported as one line by the entry points
    data_ner.py             CoNLL/IOB2 reading, sub-token alignment, splitting of long sentences (by words, not tags)
    data_classification.py  CSV label,text reading and encoding
    splits.py               a dataset folder's train/dev/test files, found and read alike for every task
    batching.py             padding examples into batches, seeded shuffling
    metrics.py              seqeval / scikit-learn scores (strict, conlleval and lenient NER F1, accuracy, macro-F1)
    modeling.py             loading an HF folder (or building a random model) with a seeded task head; probe freezing
    train.py                the training loop (AdamW, linear warm-up/decay; frozen parts in eval mode) and prediction
    probe.py                a probe's encoder features computed once (cache), the task head run on them
    federated.py            FedAvg of the whole model (a probe: its head) over silos (engine's aggregate, topology)
    aggregation.py          --aggregation: weighted (FedAvg), adaptive (Fed-MedLoRA+), exact (mean of B A); bytes
    fedlora.py              --algorithm fedlora: LoRA adapters on the frozen model, its options and records
    silos.py                splitting the training examples into silos (random, dirichlet)
    run.py                  one fine-tuning run: data -> model (or its head alone: --probe) -> train -> test scores
    output.py               mean and standard deviation over seeds, and the printed results table
    cli.py                  `python -m fedbiobert.finetune`: options, seeds, JSON and table output
    exports.py              `python -m fedbiobert.finetune.exports RUN`: fine-tunes every export of a pre-training run
"""
