"""UltraEdit — training-free, subject-free, memory-free lifelong editing (Gu et al. 2025,
arXiv 2505.14679; the authors' code XiaojieGu/UltraEdit, `editor/ultraedit.py`).

One turn (the requests of one `apply`: one edit, or a sequential run's batch) is one closed-form
step on the MLP output projection of each edited layer, from one forward and backward pass over
``prompt + " " + target_new`` with the turn's weights:

1. at every position that predicts an answer token (the prompt's last token to the answer's
   second-to-last), the module's input k (d_in) and the gradient g of the cross-entropy (mean over
   the micro-batch's answer tokens) with respect to its output (d_out);
2. lifelong normalisation: x = [k, g] updates running statistics (count n, mean μ, sum of squared
   deviations M₂, Chan's parallel update M₂ += Σ(x − x̄)² + n_old·N·Δμ²/n) kept for the whole run
   and shared by the modules of one shape; x̂ = (x − μ) / (√(M₂/(n−1)) + ε);
3. pseudo-values v = −lr · ‖k̂‖² · ĝ, and the ridge solve with the *raw* keys
       ΔW = (KᵀK + I)⁻¹ Kᵀ V   (d_in × d_out), added to W (as d_out × d_in).
   computed as Kᵀ (K Kᵀ + I)⁻¹ V (Woodbury: N × N instead of d_in × d_in; the same matrix).

The running statistics are the method's memory between edits (`editeval.methods.kit.edit_state`:
undone with an edit, saved with a sequential run). One difference from the authors' code, on purpose:
they add N·var(x) (var unbiased) where Σ(x − x̄)² = (N − 1)·var(x) is exact; theirs is NaN for a
turn of one answer-predicting row (a one-token answer edited alone) and then poisons the statistics
for good (their micro-batches of 10 edits never meet it), ours adds 0 there.

Settings for SmolLM2-135M (preset): the MLP output projections (the authors' GPT-J and Mistral
choice; their LLaMA-3 and Qwen settings edit gate/up projections, which our architecture table does
not name for every family) of layers 18-26 of GPT-J's 28, scaled to SmolLM2's 30 layers; the authors'
micro-batch (10 edits per forward); lr 1e-4 instead of their 1e-6, which barely moves a model this
small (the preset file gives the measurements).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from editeval.methods.base import Backup, HParams, backup_parameters, check_editable, register_method
from editeval.methods.kit import edit_state
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.objectives import encode_target_new
from editeval.runtime.architectures import check_layer, layer_module_name, mlp_out_as_out_in, num_layers
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import hooked

EPS = torch.finfo(torch.float32).eps


class UltraEditHParams(HParams):
    layers: list[int] = Field(default_factory=lambda: [18, 19, 20, 21, 22, 23, 24, 25, 26])
    lr: float = 1e-6
    batch_size: int = Field(10, ge=1)  # requests per forward and backward pass

    def edit_layers(self, model) -> list[int]:
        return sorted({check_layer(model, self.scale_layer(layer, num_layers(model))) for layer in self.layers})


def _features(model, tokenizer, requests: list[dict], modules: list[str], hp: UltraEditHParams):
    """Per module: (keys (N, d_in), output gradients (N, d_out)) at the answer-predicting positions."""
    device = input_device(model)
    keys: dict[str, list] = {m: [] for m in modules}
    grads: dict[str, list] = {m: [] for m in modules}
    seen: dict[str, tuple] = {}

    def recorder(name):
        return lambda _module, args, output: seen.__setitem__(name, (args[0], output))

    with frozen_for_editing(model), hooked([(model.get_submodule(m), recorder(m)) for m in modules]):
        for m in modules:  # outputs that need a gradient: the edited weights' (nothing else is computed)
            model.get_submodule(m).weight.requires_grad_(True)
        for start in range(0, len(requests), hp.batch_size):
            chunk = requests[start : start + hp.batch_size]
            ids, mask, labels = encode_target_new(
                tokenizer, [r["prompt"] for r in chunk], [r["target_new"] for r in chunk], device
            )
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            keep = labels[:, 1:] != -100  # position t predicts token t + 1
            loss = F.cross_entropy(logits[keep].float(), labels[:, 1:][keep])
            outputs = [seen[m][1] for m in modules]
            for m, grad in zip(modules, torch.autograd.grad(loss, outputs)):
                keys[m].append(seen[m][0][:, :-1][keep].detach().float())
                grads[m].append(grad[:, :-1][keep].float())
            seen.clear()
    return {m: (torch.cat(keys[m]), torch.cat(grads[m])) for m in modules}


class RunningStats:
    """The lifelong normaliser of one feature width, read from and written to the model's edit state."""

    def __init__(self, model, width: int, backup: Backup):
        self.model, self.backup, self.prefix = model, backup, f"ultraedit.norm{width}"
        self.n = edit_state.get(model, f"{self.prefix}.n")
        if self.n is None:
            self.n, self.mean, self.m2 = torch.zeros(()), torch.zeros(width), torch.zeros(width)
        else:
            self.mean, self.m2 = (edit_state.get(model, f"{self.prefix}.{k}") for k in ("mean", "m2"))

    def update(self, x: torch.Tensor) -> None:
        x = x.cpu()
        rows = x.shape[0]
        n = self.n + rows
        delta = x.mean(0) - self.mean
        spread = (x - x.mean(0)).pow(2).sum(0)  # Σ(x − x̄)²: 0 for one row
        self.m2 = self.m2 + spread + self.n * rows * delta.pow(2) / n
        self.mean = self.mean + rows * delta / n
        self.n = n

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        std = (self.m2 / (self.n - 1 + EPS)).clamp_min(0).sqrt()
        return (x - self.mean.to(x.device)) / (std.to(x.device) + EPS)

    def save(self) -> None:
        for key in ("n", "mean", "m2"):
            edit_state.put(self.model, f"{self.prefix}.{key}", getattr(self, key), self.backup)


def shift(keys: torch.Tensor, grads: torch.Tensor, stats: RunningStats, lr: float) -> torch.Tensor:
    """ΔW (d_in, d_out) = (KᵀK + I)⁻¹ Kᵀ V with V = −lr ‖k̂‖² ĝ (Woodbury form)."""
    normalised = stats.normalise(torch.cat([keys, grads], dim=1))
    k_hat, g_hat = normalised.split([keys.shape[1], grads.shape[1]], dim=1)
    values = -lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat
    eye = torch.eye(keys.shape[0], dtype=keys.dtype, device=keys.device)
    return keys.T @ torch.linalg.solve(keys @ keys.T + eye, values)


@register_method("ultraedit", hparams=UltraEditHParams, batch=True, sequential=True)
def apply_ultraedit(model, tokenizer, requests: list[dict], hparams: UltraEditHParams) -> Backup:
    """Edit `model` in place with one closed-form step over `requests`; returns the original weights
    and undoes the running statistics with them."""
    if not requests:
        return Backup()
    modules = [layer_module_name(model, layer, "mlp_out") for layer in hparams.edit_layers(model)]
    names = [m + ".weight" for m in modules]
    check_editable(model, names)
    features = _features(model, tokenizer, requests, modules, hparams)
    backup = backup_parameters(model, names)
    stats: dict[int, RunningStats] = {}
    for keys, grads in features.values():  # every module's rows first, then the shifts (the authors' order)
        width = keys.shape[1] + grads.shape[1]
        stats.setdefault(width, RunningStats(model, width, backup)).update(torch.cat([keys, grads], dim=1))
    for module, (keys, grads) in features.items():
        param = model.get_submodule(module).weight
        delta = shift(keys, grads, stats[keys.shape[1] + grads.shape[1]], hparams.lr)
        with torch.no_grad():
            mlp_out_as_out_in(model, param).add_(delta.T.to(param.device, param.dtype))
    for one in stats.values():
        one.save()
    return backup
