"""MEND — Model Editor Networks with Gradient Decomposition (Mitchell et al. 2022, "Fast Model
Editing at Scale").

The gradient of the edit loss w.r.t. an MLP output projection W (out × in) is a sum of rank-one
terms, one per token: ∇W L = Σ_t δ_t u_tᵀ, with u_t the input of W and δ_t the gradient of the
loss w.r.t. W's output at token t. MEND edits W by transforming each pair (u_t, δ_t):

1. normalise u and δ by running mean / standard deviation (collected during training);
2. one editor network per weight shape, shared by the layers of that shape, with a learned
   per-layer scale and shift of its input (the paper's "layer-specific" conditioning);
3. the network is a residual MLP with one low-rank hidden layer, initialised to the identity:
   z = [û; δ̂] · s_l + b_l,  h = z + B relu(A z),  [ũ; δ̃] = h (B starts at zero);
4. ΔW = −η_l Σ_t δ̃_t ũ_tᵀ with a learned per-layer step size η_l.

Edited: the MLP output projections of the last 3 layers (the paper's choice). The editor is
meta-trained with `editeval train mend` on a benchmark's train split (`methods.kit.editor_training`):
loss = c_edit · L_edit + c_loc · L_loc (paper: c_edit 0.1, c_loc 1). Editing applies the
predicted update to the weights (a normal checkpoint can be saved); batch editing sums the update
over every token of every request, as the paper's batched edits.
"""

from __future__ import annotations

import torch

from editeval.methods.base import Backup, register_method
from editeval.methods.kit import editor_cache, editor_training, learned_editor


class MENDHParams(learned_editor.EditorHParams):
    rank: int = 1920  # hidden width of the low-rank editor MLP (the paper's 1920)
    edit_lr: float = 1e-4  # initial per-layer step size η_l
    lr_lr: float = 1e-4  # Adam learning rate of the step sizes
    c_edit: float = 0.1
    c_loc: float = 1.0


class _RunningStats(torch.nn.Module):
    """Running mean and variance (Chan et al.'s parallel update of Welford's algorithm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        if not len(x):
            return
        n_b = float(len(x))
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = float(self.count)
        total = n + n_b
        diff = mean_b - self.mean
        self.mean += diff * (n_b / total)
        self.m2 += m2_b + diff**2 * (n * n_b / total)
        self.count += n_b

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.count) < 2:
            return x
        std = (self.m2 / (self.count - 1)).clamp_min(0).sqrt()
        return (x - self.mean) / (std + 1e-7)


class _GradientTransform(torch.nn.Module):
    """The editor network of one weight shape (shared by `n_modes` layers)."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_modes: int):
        super().__init__()
        dim = d_in + d_out
        self.d_in, self.d_out = d_in, d_out
        self.u_stats, self.d_stats = _RunningStats(d_in), _RunningStats(d_out)
        self.scale = torch.nn.Parameter(torch.ones(n_modes, dim))
        self.shift = torch.nn.Parameter(torch.zeros(n_modes, dim))
        self.A = torch.nn.Linear(dim, rank)
        self.B = torch.nn.Linear(rank, dim)
        learned_editor.kaiming_(self.A.weight)
        torch.nn.init.zeros_(self.A.bias)
        torch.nn.init.zeros_(self.B.weight)  # identity at initialisation
        torch.nn.init.zeros_(self.B.bias)

    def forward(self, u: torch.Tensor, d: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([self.u_stats.normalise(u), self.d_stats.normalise(d)], -1)
        z = z * self.scale[mode] + self.shift[mode]
        h = z + self.B(torch.relu(self.A(z)))
        return h[:, : self.d_in], h[:, self.d_in :]


def _nonzero(u: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = (u != 0).any(-1) & (d != 0).any(-1)
    return u[keep], d[keep]


class MENDEditor(learned_editor.Editor):
    method = "mend"

    def __init__(self, model, module_names, hparams: MENDHParams):
        super().__init__(model, module_names, hparams)
        self.rank = hparams.rank
        shapes = sorted(set(self.shapes.values()))
        self.shape_keys = {s: f"{s[0]}x{s[1]}" for s in shapes}
        self.nets = torch.nn.ModuleDict(
            {
                self.shape_keys[s]: _GradientTransform(
                    s[1], s[0], hparams.rank, sum(1 for v in self.shapes.values() if v == s)
                )
                for s in shapes
            }
        )
        self.modes = {}
        for s in shapes:
            for i, n in enumerate(n for n in module_names if self.shapes[n] == s):
                self.modes[n] = i
        self.lrs = torch.nn.Parameter(torch.full((len(module_names),), float(hparams.edit_lr)))
        self.c_edit, self.c_loc = hparams.c_edit, hparams.c_loc

    def param_groups(self, hparams: MENDHParams):
        return [
            {"params": [p for n, p in self.named_parameters() if n != "lrs"], "lr": hparams.lr},
            {"params": [self.lrs], "lr": hparams.lr_lr},
        ]

    def observe(self, signal) -> None:
        for n in self.module_names:
            u, d = _nonzero(*signal[n])
            net = self.nets[self.shape_keys[self.shapes[n]]]
            net.u_stats.update(u)
            net.d_stats.update(d)

    def forward(self, signal, text_ids, embed) -> dict[str, torch.Tensor]:
        deltas = {}
        for i, n in enumerate(self.module_names):
            u, d = _nonzero(*signal[n])
            net = self.nets[self.shape_keys[self.shapes[n]]]
            u_t, d_t = net(u, d, self.modes[n])
            deltas[n] = -self.lrs[i] * (d_t.T @ u_t)  # (out × in)
        return deltas

    def total_loss(self, edit_loss, loc_loss):
        return self.c_edit * edit_loss + self.c_loc * loc_loss

    def config(self) -> dict:
        return {
            "rank": self.rank,
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "step_sizes": [float(x) for x in self.lrs.detach()],
        }


def build_editor(model, tokenizer, module_names, hparams: MENDHParams) -> MENDEditor:
    return MENDEditor(model, module_names, hparams)


def train(loaded, records, hparams, benchmark: str, **kwargs) -> editor_training.TrainReport:
    """Meta-train the MEND editor (`editeval train mend`)."""
    return editor_training.train_editor("mend", build_editor, loaded, records, hparams, benchmark, **kwargs)


@register_method("mend", hparams=MENDHParams, batch=True, sequential=True, train=train)
def apply_mend(model, tokenizer, requests, hparams: MENDHParams) -> Backup:
    editor = editor_cache.load_editor(build_editor, model, tokenizer, "mend", hparams, requests)
    return learned_editor.apply_editor(model, tokenizer, requests, editor, hparams)
