"""WISE (Wang et al., NeurIPS 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model
Editing", arXiv 2405.14768; the authors' code in zjunlp/EasyEdit, `easyeditor/models/wise`).

A side memory beside one MLP output ("down") projection W (the authors' LLaMA setting: layer 27 of
32, rescaled to depth). Edits train a copy W' = W + Δ; W never changes. With the projection's input
a and output o = W a (+ bias), the side output is o' = o + Δ a and

    Δ_act(x) = mean over x's tokens of ‖σ(o') − σ(o)‖₂            (σ: the model's MLP activation)

(the largest token's instead when x has over 100 tokens). Routing, per sequence: the side memory
answers when Δ_act ≥ act_ratio · ε, where ε is the least Δ_act seen at the end of training any edit
of that memory; else the main memory W does. Saved memories are tried after the side memory, each
taking over when its Δ_act exceeds both the best so far and its own act_ratio · ε_i (the authors'
retrieval mode, their lifelong setting).

Editing one request (the paper's Algorithm 1): rows = the prompt behind each of 11 context prefixes
(the bare prompt, 5 short, 5 long) + " " + target_new, and one irrelevant row x_i (a train-split
record's prompt and answer). Loss = L_edit + L_a with L_edit the mean cross-entropy of target_new
over the edit rows and, with margins (α, β, γ) = act_margin,

    L_a = [Δ_act(x_i) − Δ_act(x_e) + γ]₊ + [Δ_act(x_i) − α]₊ + [β − Δ_act(x_e)]₊

(each the mean of its positive entries over the edit rows x_e). SGD (lr `edit_lr`, weight decay
1e-5 on W'), at most `n_iter` steps, stopping once the loss is ≤ 0.02 and moved ≤ 1e-4; the
gradient reaches only a random `mask_ratio` of Δ's entries (knowledge sharding: one mask per shard
of `save_freq` edits); after each step Δ is clamped to ±`norm_constraint` element-wise.

Every `save_freq` edits the side memory is saved (with its ε) and a fresh one starts from W; every
`merge_freq` edits the last merge_freq / save_freq saved memories are merged into one with TIES
(each task vector Δ_i trimmed to its largest `density` fraction by magnitude, the sign elected by
their sum, the agreeing entries averaged; ε = the least of theirs).

Choices the paper leaves open or that differ here, on purpose:
* the 11 context prefixes are editeval's fixed ones (`locate.context_prefixes`), not sampled from the
  model; the irrelevant row is a train-split record (rotating through the first `irrelevant_pool`),
  never the request's own locality prompt, which the evaluation scores (the authors' ZsRE loader
  feeds that prompt to training);
* Δ_act averages over a sequence's real tokens only (the authors' padded batches count padding);
  routing is per sequence of a batch (theirs runs one sequence at a time); during generation with
  a key-value cache each step routes on the tokens it feeds, as theirs does.

The memories are an `editeval.methods.kit.artifacts.Addition`, saved as a method artifact and
installed again by `editeval score --model ARTIFACT --base MODEL`; `restore` puts back the state
before the edit exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from transformers.activations import ACT2FN

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, register_method, train_benchmark_for
from editeval.methods.kit.artifacts import Addition, find_addition, install, register_addition, unique_name
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.locate import context_prefixes
from editeval.methods.kit.objectives import encode_target_new
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import check_layer, layer_module_name, mlp_out_as_out_in, num_layers
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import add_hook

NO_EDIT = math.inf  # ε of a memory that holds no edit yet: it never answers
LONG_SEQUENCE = 100  # over this many tokens Δ_act is the largest token's, not the mean (the authors' rule)


class WISEHParams(HParams):
    layer: int = 27
    edit_lr: float = Field(1.0, gt=0)
    n_iter: int = Field(70, ge=1)
    mask_ratio: float = Field(0.2, gt=0, le=1)  # the share of Δ's entries a shard trains
    norm_constraint: float = Field(1.0, gt=0)  # |Δ| bound per entry
    act_margin: list[float] = Field(default_factory=lambda: [5.0, 20.0, 10.0])  # α, β, γ
    act_ratio: float = Field(0.88, gt=0)
    weight_decay: float = 1e-5
    save_freq: int = Field(500, ge=1)  # edits per side-memory shard
    merge_freq: int = Field(1000, ge=1)  # edits between TIES merges of the saved shards
    density: float = Field(0.53, gt=0, le=1)  # TIES: the share of each task vector kept
    context_short: int = Field(5, ge=0)
    context_long: int = Field(5, ge=0)
    irrelevant_pool: int = Field(100, ge=1)  # train-split records that serve as the irrelevant row
    irrelevant_benchmark: str = "auto"  # zsre | counterfact | auto (`train_benchmark_for`)

    @model_validator(mode="after")
    def _check(self):
        if len(self.act_margin) != 3:
            raise ValueError("act_margin takes three numbers: alpha, beta, gamma")
        if self.merge_freq % self.save_freq:
            raise ValueError(f"merge_freq {self.merge_freq} must be a multiple of save_freq {self.save_freq}")
        return self


def activation_distance(act, out: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Δ_act per sequence [B]: ‖σ(cand) − σ(out)‖ per token, averaged over the valid tokens (the
    largest valid token's over `LONG_SEQUENCE` tokens)."""
    per_token = torch.linalg.vector_norm(act(cand) - act(out), dim=-1)  # [B, T]
    count = valid.sum(1)
    mean = (per_token * valid).sum(1) / count.clamp_min(1)
    largest = per_token.masked_fill(valid == 0, -math.inf).max(1).values
    return torch.where(count > LONG_SEQUENCE, largest, mean)


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merge of task vectors with equal weights: trim each to its largest `density` fraction by
    magnitude, elect each entry's sign by the sum, average the entries that agree with it."""
    trimmed = []
    for delta in deltas:
        k = int(density * delta.numel())
        keep = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
        if k > 0:
            keep[delta.abs().flatten().topk(k).indices] = True
        trimmed.append(delta * keep.view_as(delta))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (stacked.sign() == sign).to(stacked.dtype)
    weight = 1.0 / len(deltas)
    divisor = (weight * agree).sum(0)
    return (weight * stacked * agree).sum(0) / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def _activation_name(config) -> str:
    return getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "silu"


@register_addition
class WISEMemory(Addition):
    kind = "wise_memory"

    def __init__(self, name: str, module: str, shape: tuple[int, int], act_name: str, act_ratio: float, device):
        super().__init__(name)
        self.module, self.act_name, self.act_ratio = module, act_name, act_ratio
        self.act = ACT2FN[act_name]
        self.side = torch.zeros(shape, device=device)  # Δ of the side memory being trained (out, in)
        self.side_eps = NO_EDIT
        self.mask: torch.Tensor | None = None  # the shard's trainable entries
        self.memories: list[torch.Tensor] = []  # saved (and merged) Δs
        self.memory_eps: list[float] = []
        self.edits = 0
        self.training_delta: torch.Tensor | None = None  # while editing: every row gets W' = W + this
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None  # while editing: (o, o')
        self._valid: torch.Tensor | None = None  # the running forward's attention mask

    def attach(self, model) -> None:
        self._handles.append(add_hook(model, self._remember_mask, before=True, with_kwargs=True))
        self._handles.append(add_hook(model, self._forget_mask))
        self._handles.append(add_hook(model.get_submodule(self.module), self._hook))

    def _remember_mask(self, module, args, kwargs):
        self._valid = kwargs.get("attention_mask")

    def _forget_mask(self, module, args, output):
        self._valid = None

    def _valid_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] 1 where the layer's input is a real token (the last T columns of the attention
        mask: with a key-value cache the mask also covers earlier steps)."""
        mask = self._valid
        if mask is None or mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] < x.shape[1]:
            return torch.ones(x.shape[:2], device=x.device)
        return mask[:, -x.shape[1] :].to(x.device, torch.float32)

    def _hook(self, module, args, output):
        x = args[0].float()
        out = output.float()
        if self.training_delta is not None:
            side = out + F.linear(x, self.training_delta)
            self.recorded = (out, side)
            return side.to(output.dtype)
        if not self.memories and self.side_eps == NO_EDIT:
            return output
        valid = self._valid_tokens(x)
        result, best = out, torch.zeros(x.shape[0], device=x.device)
        if self.side_eps != NO_EDIT:
            side = out + F.linear(x, self.side.to(x.device))
            best = activation_distance(self.act, out, side, valid)
            result = torch.where((best >= self.side_eps * self.act_ratio)[:, None, None], side, out)
        for delta, eps in zip(self.memories, self.memory_eps):
            cand = out + F.linear(x, delta.to(x.device))
            dist = activation_distance(self.act, out, cand, valid)
            take = (dist > best) & (dist > eps * self.act_ratio)
            result = torch.where(take[:, None, None], cand, result)
            best = torch.where(take, dist, best)
        return result.to(output.dtype)

    # -- state
    def snapshot(self):
        return self.side, self.side_eps, self.mask, list(self.memories), list(self.memory_eps), self.edits

    def load_snapshot(self, snap) -> None:
        self.side, self.side_eps, self.mask, memories, eps, self.edits = snap
        self.memories, self.memory_eps = list(memories), list(eps)

    def config(self) -> dict:
        return {
            "module": self.module,
            "activation": self.act_name,
            "act_ratio": self.act_ratio,
            "edits": self.edits,
            "side_eps": None if self.side_eps == NO_EDIT else self.side_eps,
            "memory_eps": list(self.memory_eps),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"side": self.side}
        if self.mask is not None:
            out["mask"] = self.mask
        out.update({f"memory.{i}": delta for i, delta in enumerate(self.memories)})
        return out

    @classmethod
    def from_state(cls, name, config, tensors, model):
        side = tensors["side"]
        eps = [float(e) for e in config["memory_eps"]]
        memories = [tensors[f"memory.{i}"].float() for i in range(len(eps))]
        if any(m.shape != side.shape for m in memories) or len(tensors) > len(eps) + 2:
            raise ValueError("memories and side memory differ in shape, or tensors do not match memory_eps")
        weight = model.get_submodule(config["module"]).weight
        if mlp_out_as_out_in(model, weight).shape != side.shape:
            raise ValueError(f"side memory of shape {tuple(side.shape)} does not fit {config['module']}")
        if config["activation"] not in ACT2FN:
            raise ValueError(f"unknown activation {config['activation']!r}")
        memory = cls(
            name, config["module"], tuple(side.shape), config["activation"], float(config["act_ratio"]), side.device
        )
        memory.side, memory.mask = side.float(), tensors.get("mask")
        memory.side_eps = NO_EDIT if config["side_eps"] is None else float(config["side_eps"])
        memory.memories, memory.memory_eps, memory.edits = memories, eps, int(config["edits"])
        return memory


def _memory(model, module: str, hparams: WISEHParams, backup: Backup) -> WISEMemory:
    """The model's WISE memory at `module` (edited in place, its state put back on `restore`), or a new one."""
    existing = find_addition(model, WISEMemory.kind)
    if existing is not None and existing.module == module:
        snap = existing.snapshot()
        backup.undo.append(lambda: existing.load_snapshot(snap))
        existing.act_ratio = hparams.act_ratio
        return existing
    weight = mlp_out_as_out_in(model, model.get_submodule(module).weight)
    memory = WISEMemory(
        unique_name(model, "wise"),
        module,
        tuple(weight.shape),
        _activation_name(model.config),
        hparams.act_ratio,
        weight.device,
    )
    backup.undo.append(install(model, memory))
    return memory


_POOLS: dict[tuple, list[tuple[str, str]]] = {}


def irrelevant_rows(benchmark: str, n: int, datasets_dir) -> list[tuple[str, str]]:
    """(prompt, answer) of the first n usable train-split records: the rows an edit must not fire on."""
    from editeval.data import load_requests
    from editeval.runtime import paths

    key = (benchmark, n, str(paths.datasets_dir(datasets_dir)))
    if key not in _POOLS:
        try:
            records = load_requests(benchmark, "train", None, n, datasets_dir)
        except (EditevalError, FileNotFoundError, ValueError) as err:
            raise EditevalError(f"WISE needs irrelevant rows from {benchmark}/train: {err}") from None
        rows = [(r["prompt"], r["target_new"]) for r in records if r["prompt"].strip() and r["target_new"].strip()]
        if not rows:
            raise EditevalError(f"WISE: {benchmark}/train has no record to use as an irrelevant row")
        _POOLS[key] = rows
    return _POOLS[key]


class _Losses:
    """L_edit + L_a of one request's rows (the last row is the irrelevant one)."""

    def __init__(self, model, memory: WISEMemory, batch, layer: int, hparams: WISEHParams):
        self.memory, self.batch, self.hp = memory, batch, hparams
        self.hidden_fn = UpperBlocks(model, layer)
        self.head = model.get_output_embeddings()
        self.valid = batch[1].float()

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, Δ_act of the edit rows)."""
        _, _, labels = self.batch
        hidden = self.hidden_fn(self.batch)[:-1, :-1]
        targets = labels[:-1, 1:]
        keep = targets != -100
        nll = F.cross_entropy(self.head(hidden[keep]).float(), targets[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        edit_loss = (torch.zeros(len(targets), device=nll.device).index_add(0, rows, nll) / keep.sum(1)).mean()
        out, side = self.memory.recorded
        dist = activation_distance(self.memory.act, out, side, self.valid)
        in_scope, out_scope = dist[:-1], dist[-1:]
        alpha, beta, gamma = self.hp.act_margin
        act_loss = _positive_mean(out_scope[:, None] - in_scope[None] + gamma)
        act_loss = act_loss + _positive_mean(out_scope - alpha) + _positive_mean(beta - in_scope)
        return edit_loss + act_loss, in_scope.detach()


def _positive_mean(x: torch.Tensor) -> torch.Tensor:
    positive = x[x > 0]
    return positive.mean() if positive.numel() else x.new_zeros(())


def _edit_one(model, tokenizer, memory: WISEMemory, request: dict, irrelevant: tuple[str, str], layer: int, hp):
    device = input_device(model)
    prompts = [prefix + request["prompt"] for prefix in context_prefixes(hp.context_short, hp.context_long)]
    ids, mask, labels = encode_target_new(
        tokenizer, prompts + [irrelevant[0]], [request["target_new"]] * len(prompts) + [irrelevant[1]], device
    )
    labels[-1] = -100  # the irrelevant row has no target: only its activation counts
    batch = (ids, mask, labels)
    if memory.edits % hp.save_freq == 0:  # a new shard: a new random share of Δ's entries to train
        memory.mask = torch.rand(memory.side.shape, device=memory.side.device) < hp.mask_ratio
    weight = mlp_out_as_out_in(model, model.get_submodule(memory.module).weight).detach().float()
    delta = memory.side.clone().to(weight.device).requires_grad_(True)
    losses = _Losses(model, memory, batch, layer, hp)
    previous, last, eps = 0.0, 1e9, memory.side_eps
    memory.training_delta = delta
    try:
        for step in range(hp.n_iter):
            loss, in_scope = losses()
            stop = abs(last - previous) <= 1e-4 and last <= 0.02  # the authors' early stop, on the losses so far
            if stop or step == hp.n_iter - 1:  # ε: the least Δ_act an edit of this memory ended with
                eps = min(eps, float(in_scope.mean()))
            if stop:
                break
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                # SGD with weight decay on W' = W + Δ, the gradient masked to the shard's entries
                delta -= hp.edit_lr * (grad * memory.mask + hp.weight_decay * (weight + delta))
                delta.clamp_(-hp.norm_constraint, hp.norm_constraint)
            previous, last = last, float(loss.detach())
    finally:
        memory.training_delta, memory.recorded = None, None
    memory.side, memory.side_eps = delta.detach(), eps
    memory.edits += 1
    if memory.edits % hp.save_freq == 0:  # the shard is full: save it, start a fresh side memory
        memory.memories = [*memory.memories, memory.side]
        memory.memory_eps = [*memory.memory_eps, memory.side_eps]
        memory.side, memory.side_eps = torch.zeros_like(memory.side), NO_EDIT
    if memory.edits % hp.merge_freq == 0:  # merge the shards saved since the last merge into one
        n = hp.merge_freq // hp.save_freq
        merged = ties_merge(memory.memories[-n:], hp.density)
        memory.memories = [*memory.memories[:-n], merged]
        memory.memory_eps = [*memory.memory_eps[:-n], min(memory.memory_eps[-n:])]


@register_method("wise", hparams=WISEHParams, batch=True, sequential=True, uses_datasets=True)
def apply_wise(model, tokenizer, requests, hparams: WISEHParams, *, datasets_dir=None) -> Backup:
    """Edit the requests one after another into the model's WISE memory (installed on first use)."""
    backup = Backup()
    if not requests:
        return backup
    layer = check_layer(model, hparams.scale_layer(hparams.layer, num_layers(model)))
    module = layer_module_name(model, layer, "mlp_out")
    pool = irrelevant_rows(
        train_benchmark_for(hparams.irrelevant_benchmark, requests), hparams.irrelevant_pool, datasets_dir
    )
    with frozen_for_editing(model, backup):
        memory = _memory(model, module, hparams, backup)
        for request in requests:
            _edit_one(model, tokenizer, memory, request, pool[memory.edits % len(pool)], layer, hparams)
    return backup
