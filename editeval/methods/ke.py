"""KE — KnowledgeEditor (De Cao et al. 2021, "Editing Factual Knowledge in Language Models").

A hyper-network, conditioned on the edit, turns the fine-tuning gradient of each edited matrix
W (out × in) into the update:

    ΔW = σ(η) · (α̂ ⊙ ∇W L + β̂),   α̂ = σ(α) γᵀ,   β̂ = σ(β) δᵀ

where α, β ∈ R^out, γ, δ ∈ R^in and η are predicted from the edit's encoding h. The encoding is
a bidirectional LSTM over the model's own (frozen) input embeddings of ``prompt + " " +
target_new``, mean-pooled; each edited matrix has its own feed-forward head over h.

Two deviations, for a small CPU training budget (documented in the preset): the gradient is
used normalised to unit Frobenius norm, and each layer's update has a learned scale (starting
at `edit_scale`), so an untrained editor starts as a small gradient-descent step; the heads are
initialised so that σ(α)γᵀ ≈ −0.5 and β̂ ≈ 0 (descent, no bias term) and learn from there.

Training: as in the paper, the edit loss is minimised subject to a constraint on how much the
model's predictions change elsewhere, KL(p_base ‖ p_edited) on locality prompts ≤ `kl_margin`,
solved with a Lagrange multiplier λ ≥ 0 (gradient ascent on λ): loss = c_edit · L_edit +
λ (L_loc − m). The training loop is MEND's (`methods.kit.editor_training`). Edits the same matrices as MEND
(the last 3 MLP output projections); one edit at a time (KE conditions on a single edit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from editeval.methods.base import Backup, register_method
from editeval.methods.kit import editor_cache, editor_training, learned_editor


class KEHParams(learned_editor.EditorHParams):
    cond_dim: int = 256  # LSTM hidden size per direction
    head_dim: int = 256  # hidden width of each layer's head
    edit_scale: float = 1.0  # initial per-layer scale of the (normalised) update
    scale_lr: float = 1e-2  # Adam learning rate of the per-layer log-scales
    c_edit: float = 1.0
    kl_margin: float = 1e-2  # m: the constraint KL ≤ m
    multiplier_lr: float = 1e-2  # gradient-ascent rate of the Lagrange multiplier's parameter


class _Head(torch.nn.Module):
    def __init__(self, cond: int, hidden: int, d_out: int, d_in: int):
        super().__init__()
        self.trunk = torch.nn.Linear(cond, hidden)
        self.alpha = torch.nn.Linear(hidden, d_out)
        self.beta = torch.nn.Linear(hidden, d_out)
        self.gamma = torch.nn.Linear(hidden, d_in)
        self.delta = torch.nn.Linear(hidden, d_in)
        self.eta = torch.nn.Linear(hidden, 1)
        for lin in (self.alpha, self.beta, self.gamma, self.delta, self.eta):
            torch.nn.init.normal_(lin.weight, std=1e-3)
            torch.nn.init.zeros_(lin.bias)
        torch.nn.init.constant_(self.gamma.bias, -1.0)  # α̂ = σ(α)γᵀ ≈ −0.5: a descent step

    def forward(self, h: torch.Tensor):
        z = torch.tanh(self.trunk(h))
        return self.alpha(z), self.beta(z), self.gamma(z), self.delta(z), self.eta(z)


class KEEditor(learned_editor.Editor):
    method = "ke"

    def __init__(self, model, module_names, hparams: KEHParams):
        super().__init__(model, module_names, hparams)
        emb_dim = model.get_input_embeddings().weight.shape[1]
        self.encoder = torch.nn.LSTM(emb_dim, hparams.cond_dim, batch_first=True, bidirectional=True)
        self.heads = torch.nn.ModuleList(
            _Head(2 * hparams.cond_dim, hparams.head_dim, *self.shapes[n]) for n in module_names
        )
        self.log_scales = torch.nn.Parameter(torch.full((len(module_names),), math.log(hparams.edit_scale)))
        # λ = softplus(ρ), starting at 1
        self.rho = torch.nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.c_edit, self.margin = hparams.c_edit, hparams.kl_margin
        self.dims = (hparams.cond_dim, hparams.head_dim)

    def param_groups(self, hparams: KEHParams):
        rest = [p for n, p in self.named_parameters() if n not in ("log_scales", "rho")]
        return [
            {"params": rest, "lr": hparams.lr},
            {"params": [self.log_scales], "lr": hparams.scale_lr},
            {"params": [self.rho], "lr": hparams.multiplier_lr},
        ]

    def encode(self, text_ids: list[list[int]], embed: torch.nn.Module) -> torch.Tensor:
        device = embed.weight.device
        codes = []
        for ids in text_ids:
            with torch.no_grad():
                x = embed(torch.tensor([ids], device=device)).float()
            out, _ = self.encoder(x)
            codes.append(out.mean(1)[0])
        return torch.stack(codes).mean(0)  # one edit: its encoding; several: their mean

    def forward(self, signal, text_ids, embed) -> dict[str, torch.Tensor]:
        h = self.encode(text_ids, embed)
        deltas = {}
        for i, n in enumerate(self.module_names):
            u, d = signal[n]
            grad = d.T @ u  # (out × in)
            grad = grad / (grad.norm() + 1e-12)
            a, b, g, dl, eta = self.heads[i](h)
            update = torch.sigmoid(a)[:, None] * g[None, :] * grad + torch.sigmoid(b)[:, None] * dl[None, :]
            deltas[n] = torch.exp(self.log_scales[i]) * torch.sigmoid(eta) * update
        return deltas

    @property
    def multiplier(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def total_loss(self, edit_loss, loc_loss):
        return self.c_edit * edit_loss + self.multiplier * (loc_loss - self.margin)

    def before_step(self) -> None:
        if self.rho.grad is not None:
            self.rho.grad.neg_()  # ascend on the multiplier

    def config(self) -> dict:
        return {
            "cond_dim": self.dims[0],
            "head_dim": self.dims[1],
            "scales": [float(x) for x in self.log_scales.detach().exp()],
            "multiplier": float(self.multiplier.detach()),
        }


def build_editor(model, tokenizer, module_names, hparams: KEHParams) -> KEEditor:
    return KEEditor(model, module_names, hparams)


def train(loaded, records, hparams, benchmark: str, **kwargs) -> editor_training.TrainReport:
    """Meta-train the KE editor (`editeval train ke`)."""
    return editor_training.train_editor("ke", build_editor, loaded, records, hparams, benchmark, **kwargs)


@register_method("ke", hparams=KEHParams, batch=False, sequential=True, train=train)
def apply_ke(model, tokenizer, requests, hparams: KEHParams) -> Backup:
    editor = editor_cache.load_editor(build_editor, model, tokenizer, "ke", hparams, requests)
    return learned_editor.apply_editor(model, tokenizer, requests, editor, hparams)
