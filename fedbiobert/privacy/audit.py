"""The audit itself: what an honest-but-curious server recovers from the activations at each cut, what each
defence leaves it and costs in F1, the controls, and what the head on the server hands it outright.

Every finished unit (one attack, one fine-tune) is written to OUT/parts/ as it ends, atomically, so an
interrupted audit continues with --resume; activations are recomputed (seconds), decoders and fine-tunes
are not.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fedbiobert.atomic import write_json_atomically
from fedbiobert.config import Config
from fedbiobert.experiments.progress import say
from fedbiobert.privacy import activations as acts
from fedbiobert.privacy.defence import Defence, defend
from fedbiobert.privacy.downstream import defended_f1
from fedbiobert.privacy.inversion import DECODERS, top_k, train_decoder
from fedbiobert.privacy.plan import AuditPlan
from fedbiobert.privacy.scoring import baselines, recovery
from fedbiobert.privacy.texts import Sequences, silo_text, text_windows

METRICS = ("top1", "top5", "entity_top1", "entity_top5", "exact_sequences")
CUTS_PER_FORWARD = 4  # activations of this many cuts are held at once (memory), the forward is redone per group
# the engine's default --mlm_probability: the share of tokens whose labels a server head gets
MLM_PROBABILITY = Config().mlm_probability


class Parts:
    """OUT/parts/KEY.json: a finished unit's result, reused later in the run (the undefended attack at the
    defence cut is also the cut table's) and by --resume."""

    def __init__(self, out: Path, resume: bool):
        self.folder, self.resume, self.done = out / "parts", resume, {}

    def get(self, key: str, compute):
        path = self.folder / f"{key}.json"
        if key not in self.done:
            if self.resume and path.is_file():
                self.done[key] = json.loads(path.read_text(encoding="utf-8"))
            else:
                self.done[key] = compute()
                write_json_atomically(path, self.done[key], parents=True)
        return self.done[key]


class Attack:
    """The attacker's material for one model: public activations and tokens, the silo's activations at its
    scored positions, and the model's word embeddings."""

    def __init__(self, plan: AuditPlan, public: Sequences, silo: Sequences):
        self.plan, self.public, self.silo = plan, public, silo

    def activations(self, model, cuts: list[int], attacked_model=None) -> dict:
        """cut -> (public activations (M, H), their tokens, silo activations (S, H)); the silo's come from
        `attacked_model` when given (the control whose weights the attacker lacks)."""
        keep = self.public.attention_mask.bool()
        found = {}
        for start in range(0, len(cuts), CUTS_PER_FORWARD):
            group = cuts[start:start + CUTS_PER_FORWARD]
            public = acts.hidden_at_cuts(model, self.public, group)
            silo = acts.hidden_at_cuts(attacked_model or model, self.silo, group)
            for cut in group:
                found[cut] = (public[cut][keep], self.public.input_ids[keep], silo[cut][self.silo.scored])
        return found

    def run(self, material, vocab: torch.Tensor, defence: Defence, label: str) -> dict:
        """Both decoders trained on the public activations (defended), tested on the silo's (defended as sent);
        the best decoder's scores on top, each decoder's under `decoders`."""
        public_hidden, tokens, silo_hidden = material
        device, seed = self.plan.device, self.plan.seed
        sent = defend(silo_hidden, defence, torch.Generator().manual_seed(seed + 1))
        per_decoder = {}
        for kind in DECODERS:
            started = time.time()
            decoder = train_decoder(kind, public_hidden.to(device), tokens.to(device), vocab.to(device), defence,
                                    self.plan.preset.decoder, seed)
            per_decoder[kind] = recovery(top_k(decoder, sent.to(device)).cpu(), self.silo)
            say(f"    {label}, {kind}: top-1 {per_decoder[kind]['top1']:.3f}, top-5 {per_decoder[kind]['top5']:.3f}"
                f" ({time.time() - started:.0f} s)")
        best = max(DECODERS, key=lambda kind: per_decoder[kind]["top1"])
        return {**{metric: per_decoder[best][metric] for metric in METRICS}, "best_decoder": best,
                "decoders": per_decoder}


def load_texts(plan: AuditPlan, tokenizer) -> tuple[Sequences, Sequences]:
    preset = plan.preset
    public = text_windows([plan.public], tokenizer, preset.max_len, preset.public_windows, plan.seed)
    silo = silo_text(plan.silo, tokenizer, preset.max_len, preset.silo_sequences, plan.seed)
    say(f"public text: {len(public)} sequences, {public.tokens():,} tokens ({plan.public.name}); silo text: "
        f"{len(silo)} sequences, {silo.tokens():,} tokens, {int(silo.entity.sum()):,} in entities "
        f"({', '.join(path.name for path in plan.silo)})")
    return public, silo


def per_cut(plan: AuditPlan, parts: Parts, attack: Attack, model) -> dict:
    """cut -> the undefended attack's scores."""
    say(f"[1/4] recovery per cut {plan.cuts}")
    material, vocab = attack.activations(model, plan.cuts), acts.word_embeddings(model)
    return {str(cut): parts.get(f"attack-cut{cut}-none", lambda cut=cut: attack.run(
        material[cut], vocab, Defence(), f"cut {cut}")) for cut in plan.cuts}


def per_defence(plan: AuditPlan, parts: Parts, attack: Attack, model) -> list[dict]:
    """Each defence at the defence cut: the adapted attack's scores and the NER F1 with it in place."""
    cut = plan.defence_cut
    say(f"[2/4] defences at cut {cut}: {', '.join(d.label() for d in plan.defences)}")
    material, vocab = attack.activations(model, [cut])[cut], acts.word_embeddings(model)
    norms = material[0].norm(dim=-1)
    say(f"    public activations at cut {cut}: token L2 norm median {float(norms.median()):.2f}, 90th percentile "
        f"{float(norms.quantile(0.9)):.2f}; element std {float(material[0].std()):.3f} (the units of sigma and C)")
    rows = []
    for index, defence in enumerate(plan.defences, 1):
        key = defence.label().replace(", ", "-").replace(" ", "")
        label = f"cut {cut}, {defence.label()}"
        found = parts.get(f"attack-cut{cut}-{key}", lambda: attack.run(material, vocab, defence, label))
        say(f"    F1 ({plan.ner.name}) with {defence.label()} [{index}/{len(plan.defences)}]")
        f1 = parts.get(f"f1-cut{cut}-{key}",
                       lambda: defended_f1(plan.model_dir, plan.ner, cut, defence, plan.preset.f1, seed=1))
        say(f"    {defence.label()}: recovery top-1 {found['top1']:.3f}, F1 {f1['f1']:.4f}")
        rows.append({"defence": defence.label(), "sigma": defence.sigma, "clip": defence.clip,
                     "noise_multiplier": defence.noise_multiplier, "recovery": found, "f1": f1})
    return rows


def controls(plan: AuditPlan, parts: Parts, attack: Attack, model) -> dict:
    """A random untrained model of the same config at the first and last cut: attacked with its weights known
    (they are no defence: the attack still reads the tokens) and unknown (the decoder trained on one random
    draw, the silo's activations from another: chance plus what position allows)."""
    cuts = sorted({0, acts.num_layers(model)})
    say(f"[3/4] controls: a random model of the same config, cuts {cuts}")
    known, other = acts.random_like(model, plan.seed + 1), acts.random_like(model, plan.seed + 2)
    result = {}
    for name, attacked in (("random_weights_known", None), ("random_weights_unknown", other)):
        material, vocab = attack.activations(known, cuts, attacked), acts.word_embeddings(known)
        result[name] = {str(cut): parts.get(f"control-{name}-cut{cut}", lambda cut=cut: attack.run(
            material[cut], vocab, Defence(), f"{name}, cut {cut}")) for cut in cuts}
    return result


def label_leakage(silo: Sequences) -> dict:
    """Stated from what is sent, not attacked: with --head_placement server a client sends the token ids of
    its masked positions (fedbiobert/algorithms/split_parts.py), so the server reads them exactly."""
    return {"head_on_server": f"the labels (original token ids) of the masked positions, about {MLM_PROBABILITY:.0%} "
            "of a silo's tokens (--mlm_probability), are sent in the clear every step: recovered exactly, whatever "
            "the defence (which acts on the hidden states only)",
            "head_on_client": "no labels leave the silo", "mlm_probability": MLM_PROBABILITY,
            "silo_tokens": silo.tokens()}


def with_server_head(top1: float) -> float:
    """Top-1 recovery of a silo's tokens when the masked ones' labels are sent too (the rest by the attack)."""
    return round(MLM_PROBABILITY + (1 - MLM_PROBABILITY) * top1, 4)


def run_audit(plan: AuditPlan, header: dict) -> dict:
    started = time.time()
    model, tokenizer = acts.load_encoder(plan.model_dir)
    model.to(plan.device)
    public, silo = load_texts(plan, tokenizer)
    parts, attack = Parts(plan.out, plan.resume), Attack(plan, public, silo)
    results = {**header, "public": {"path": str(plan.public), "sequences": len(public), "tokens": public.tokens()},
               "silo": {"paths": [str(path) for path in plan.silo], "sequences": len(silo), "tokens": silo.tokens(),
                        "entity_tokens": int(silo.entity.sum())},
               "baselines": baselines(public, silo)}
    results["cuts"] = per_cut(plan, parts, attack, model)
    for row in results["cuts"].values():
        row["top1_with_server_head"] = with_server_head(row["top1"])
    results["defence_cut"] = plan.defence_cut
    results["defences"] = per_defence(plan, parts, attack, model)
    results["controls"] = controls(plan, parts, attack, model.cpu())
    results["label_leakage"] = label_leakage(silo)
    results["seconds"] = round(time.time() - started, 1)
    return results
