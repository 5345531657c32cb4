"""The privacy audit: what an honest-but-curious server recovers from a split client's activations, per
cut, and what a defence (noise, clipping, a deeper cut) costs in downstream F1. docs/privacy.md.

    defence.py      the activation defence (per-token clip, then Gaussian noise), used by the engine's client
                    sends (algorithms/split_parts.py) and by the audit alike
    texts.py        the public text (decoder training) and the silo's held-out text (attacked), as id tensors
    activations.py  loading the client model (or a random one of its config); hidden states at each cut
    inversion.py    the inversion decoders (linear, MLP) from an activation to its token, training, top-k
    scoring.py      token, entity and exact-sequence recovery; the unigram and position baselines
    downstream.py   NER F1 of a fine-tune with the defence at the cut (what a defence costs)
    plan.py         presets (small, full), command-line options and their checks
    audit.py        the audit: per cut, per defence, controls, label leakage; resumable parts
    report.py       results.json, results.md and privacy.png
    __main__.py     `python -m fedbiobert.privacy audit`

Importing this package imports nothing else: the engine imports defence.py alone.
"""
