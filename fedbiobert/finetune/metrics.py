"""Scores: entity-level NER precision/recall/F1 (seqeval, strict IOB2), the same in seqeval's
default conlleval-compatible mode (`conlleval_*`, what BioBERT and BLUE report), lenient (overlap)
F1, and classification accuracy and macro-F1 (scikit-learn).

Strict and conlleval differ on spans opened by I- (invalid IOB2): strict drops them, gold ones
included; conlleval reads them as entities, so a prediction that starts an entity with I- can match.

Lenient matching: a predicted entity counts as correct when it overlaps a gold entity of the same
type (entities read CoNLL-style, so a span opened by I- counts too); recall symmetrically.
"""
from __future__ import annotations

from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score as sk_f1_score
from sklearn.metrics import precision_recall_fscore_support


def _strict(function, gold, pred, **kwargs):
    return float(function(gold, pred, mode="strict", scheme=IOB2, zero_division=0, **kwargs))


def _conlleval(function, gold, pred):
    return float(function(gold, pred, zero_division=0))  # seqeval's default mode is conlleval's


def ner_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """precision, recall, f1 (strict), conlleval_ and lenient_ precision/recall/f1, and per_type."""
    scores = {"precision": _strict(precision_score, gold, pred), "recall": _strict(recall_score, gold, pred),
              "f1": _strict(f1_score, gold, pred)}
    for name, function in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        scores[f"conlleval_{name}"] = _conlleval(function, gold, pred)
    lenient = lenient_scores(gold, pred)
    scores.update({f"lenient_{key}": value for key, value in lenient["all"].items()})
    scores["per_type"] = _per_type(gold, pred, lenient)
    return scores


def _per_type(gold: list[list[str]], pred: list[list[str]], lenient: dict) -> dict:
    """Strict precision/recall/f1/support, conlleval_f1 and lenient_f1 of every entity type either
    mode finds (a type seen only through I- spans has strict scores 0 and support 0)."""
    strict = _type_report(gold, pred, mode="strict", scheme=IOB2)
    conlleval = _type_report(gold, pred)
    per_type = {}
    for entity_type in sorted(set(strict) | set(conlleval)):
        values = strict.get(entity_type, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        per_type[entity_type] = {
            "precision": float(values["precision"]), "recall": float(values["recall"]),
            "f1": float(values["f1-score"]), "support": int(values["support"]),
            "conlleval_f1": float(conlleval.get(entity_type, {}).get("f1-score", 0.0)),
            "lenient_f1": lenient.get(entity_type, {}).get("f1", 0.0)}
    return per_type


def _type_report(gold, pred, **mode) -> dict:
    report = classification_report(gold, pred, zero_division=0, output_dict=True, **mode)
    return {key: values for key, values in report.items() if not key.endswith(" avg")}


def _spans(sequences: list[list[str]]) -> list[list[tuple[str, int, int]]]:
    return [get_entities(sequence) for sequence in sequences]


def _overlapping(span: tuple[str, int, int], others: list[tuple[str, int, int]]) -> bool:
    kind, start, end = span
    return any(kind == other_kind and start <= other_end and other_start <= end
               for other_kind, other_start, other_end in others)


def _prf(hits_pred: int, num_pred: int, hits_gold: int, num_gold: int) -> dict[str, float]:
    precision = hits_pred / num_pred if num_pred else 0.0
    recall = hits_gold / num_gold if num_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def lenient_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, dict[str, float]]:
    """Overlap-based precision/recall/F1, overall ('all') and per entity type."""
    counts: dict[str, list[int]] = {}  # type -> [hits_pred, num_pred, hits_gold, num_gold]
    for gold_spans, pred_spans in zip(_spans(gold), _spans(pred)):
        for span in pred_spans:
            for key in ("all", span[0]):
                entry = counts.setdefault(key, [0, 0, 0, 0])
                entry[0] += _overlapping(span, gold_spans)
                entry[1] += 1
        for span in gold_spans:
            for key in ("all", span[0]):
                entry = counts.setdefault(key, [0, 0, 0, 0])
                entry[2] += _overlapping(span, pred_spans)
                entry[3] += 1
    result = {key: _prf(*entry) for key, entry in counts.items()}
    result.setdefault("all", _prf(0, 0, 0, 0))
    return result


def classification_scores(gold: list[int], pred: list[int], names: list[str]) -> dict:
    """accuracy, macro_f1 over every class of `names` (absent ones count as 0), per_class scores."""
    classes = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(sk_f1_score(gold, pred, labels=classes, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(names, precision, recall, f1, support)},
    }
