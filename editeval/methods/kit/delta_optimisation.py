"""The value vectors of ROME and MEMIT: the δ added at the subject's last token.

`compute_delta`: the vector δ that, added at the subject's last token to the output of a module
(ROME: the MLP output projection of the edited layer; MEMIT: the last edited block), makes the
model produce the new target: minimise the target NLL over the context-template prompts +
kl_factor · KL on "{subject} is a" + weight decay, Adam, δ clamped to clamp_norm_factor·‖v‖
(ROME's compute_v / MEMIT's compute_z; Meng et al. 2022, 2023). `compute_deltas` optimises several
requests' δ side by side in one batch, each with its own loss, steps and result (MEMIT's values
of a mass edit). The subject, the templates and the target tokens come from
`editeval.methods.kit.locate`.

Exact shortcuts in `compute_delta` (`_FastRunner`; `fast=False` runs the naive computation and a
test checks that both give the same loss, steps and δ). Only the work that depends on δ is redone
at each of the ≤ 25 steps:
- columns before the subject's last token do not depend on δ (causal attention): their keys and
  values at every layer are computed once (KV cache), each step runs the columns from the
  subject's last token on;
- blocks below the edited one do not depend on δ either: their output at those columns is
  computed once and replayed (the blocks are swapped for stubs while δ is optimised and put back
  after, also on error), each step runs blocks L..N-1 only (L+1..N-1 when δ sits at block L's
  output, as in MEMIT);
- the LM head runs only at the positions the loss reads (the target tokens and the KL position),
  not over the whole sequence; all templates + the KL prompt go in one batch; no parameter
  gradients (requires_grad off while optimising).
On SmolLM2-135M (ROME, layer 7, 22 rows) a step is ~50 GFLOP instead of ~300 for the naive pass,
and 81 % of its time is matrix products, ~1.3x the single-thread matmul floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from editeval.errors import EditevalError
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.locate import (
    KL_TEMPLATE,
    Located,
    first_output,
    locate,
    pad_id,
    subject_span,
    target_ids,
)
from editeval.runtime.architectures import architecture
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import Trace


@dataclass
class DeltaResult:
    delta: torch.Tensor  # float32 (d_out,)
    init: torch.Tensor  # the module's output at the bare prompt's subject-last token, float32
    steps: int
    loss: float
    nll: float


def _aligned_batch(tokenizer, rows: list[Located], device):
    """Left-pad rows so every subject-last token sits in one column P; right-pad the suffixes."""
    P = max(r.index for r in rows)
    S = max(len(r.ids) - r.index for r in rows)
    pad = pad_id(tokenizer)
    ids = torch.full((len(rows), P + S), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), P + S), dtype=torch.long)
    for i, r in enumerate(rows):
        left = P - r.index
        ids[i, left : left + len(r.ids)] = torch.tensor(r.ids)
        mask[i, left : left + len(r.ids)] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device), P


def compute_delta(
    model, tokenizer, request: dict, module_name: str, prefixes: list[str], hp, *, fast: bool = True
) -> DeltaResult:
    """Optimise δ added to `module_name`'s output at the subject's last token (see module doc).

    hp provides v_num_grad_steps, v_lr, v_loss_stop, v_weight_decay, clamp_norm_factor, kl_factor.
    fast=False runs the naive computation (every step a full forward over every token, logits
    everywhere); the fast path gives the same loss and δ up to float rounding (a test checks it).
    """
    return compute_deltas(model, tokenizer, [request], module_name, prefixes, hp, fast=fast)[0]


def compute_deltas(
    model, tokenizer, requests: list[dict], module_name: str, prefixes: list[str], hp, *, fast: bool = True
) -> list[DeltaResult]:
    """`compute_delta` of each request, the requests optimised side by side in one batch (MEMIT's
    values of a mass edit): one forward and backward pass per step for all of them.

    Each request gets the loss, steps and δ it gets alone, up to float rounding (a test checks it):
    the requests share the passes, never a term of the loss — rows never attend to each other, the
    gradient of the summed losses with respect to request b's δ is its own loss's gradient, Adam
    works element by element, and each request stops at its own step (its δ is taken then; the rows
    of a stopped request ride along until the batch is done, unchanged for the others).
    """
    device = input_device(model)
    n_req, n_pre = len(requests), len(prefixes)
    rewrite = []  # rewrite rows grouped by request: (row, prompt length, target ids)
    for request in requests:
        tgt = target_ids(tokenizer, request)
        for prefix in prefixes:
            loc = locate(tokenizer, request, prefix)
            rewrite.append((Located(loc.ids + tgt[:-1], loc.index), len(loc.ids), tgt))
    kl_rows = []
    if hp.kl_factor > 0:
        for request in requests:
            subject = request["prompt"][slice(*subject_span(request))]
            kl_rows.append(locate(tokenizer, {"prompt": KL_TEMPLATE.format(subject), "subject": subject}))
    rows = [r for r, _, _ in rewrite] + kl_rows
    ids, mask, pos, aligned = _aligned_batch(tokenizer, rows, device)
    P = aligned if fast else 0  # columns before the subject-last column: cached once (fast path)

    # (row, column in the suffix) of each logit the loss reads, and the token it must predict
    t_rows, t_cols, t_tok = [], [], []
    for i, (r, n_prompt, tgt) in enumerate(rewrite):
        left = aligned - r.index  # left padding of row i
        for j, tok in enumerate(tgt):
            t_rows.append(i)
            t_cols.append(left + n_prompt - 1 + j - P)
            t_tok.append(tok)
    t_rows = torch.tensor(t_rows, device=device)
    t_cols = torch.tensor(t_cols, device=device)
    t_tok = torch.tensor(t_tok, device=device)
    row_tgt_len = torch.tensor([len(tgt) for _, _, tgt in rewrite], device=device, dtype=torch.float32)
    subj_col = aligned - P  # the subject-last column, in suffix coordinates
    kl_row_ids = torch.arange(len(rewrite), len(rows), device=device)
    owner = torch.tensor([i // n_pre for i in range(len(rewrite))] + list(range(len(kl_rows))), device=device)
    bare_rows = torch.arange(0, len(rewrite), n_pre, device=device)  # each request's first prefix: ""
    n_t = len(t_rows)

    delta = torch.zeros(
        n_req, _module_out_dim(model, module_name), device=device, dtype=torch.float32, requires_grad=True
    )
    state = {"init": None}

    def add_delta(name, output):
        h = first_output(output)
        if state["init"] is None:
            state["init"] = h[bare_rows.to(h.device), subj_col].detach().float().to(delta.device, copy=True)
        h = h.clone()
        h[:, subj_col] = h[:, subj_col] + delta[owner].to(h.device, h.dtype)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    if fast:
        runner = _FastRunner(model, module_name, ids, mask, pos, P, add_delta)
        positions = (torch.cat([t_rows, kl_row_ids]), torch.cat([t_cols, torch.full_like(kl_row_ids, subj_col)]))
    else:

        def runner(_positions=None):
            with Trace(model, [module_name], retain_output=False, edit_output=add_delta):
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            return torch.cat([logits[t_rows, t_cols], logits[kl_row_ids, subj_col]])

        positions = None

    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_init = None
    results: list[DeltaResult | None] = [None] * n_req
    active = torch.ones(n_req, dtype=torch.bool, device=device)
    with frozen_for_editing(model):  # no parameter gradients while δ is optimised
        try:
            if fast:
                runner.prepare()
            for step in range(hp.v_num_grad_steps):
                opt.zero_grad()
                logits = runner(positions)  # (targets + KL rows, vocab)
                logp = torch.log_softmax(logits[:n_t].float(), dim=-1)
                tok_logp = logp.gather(1, t_tok[:, None]).squeeze(1)
                row_nll = -torch.zeros(len(rewrite), device=device).index_add(0, t_rows, tok_logp) / row_tgt_len
                nll = row_nll.view(n_req, n_pre).mean(1)
                loss = nll
                if kl_rows:
                    kl_logp = torch.log_softmax(logits[n_t:].float(), dim=-1)
                    if kl_init is None:
                        kl_init = kl_logp.detach().clone()
                    kl = F.kl_div(kl_init, kl_logp, log_target=True, reduction="none").sum(-1)
                    loss = loss + hp.kl_factor * kl
                init = state["init"]
                loss = loss + hp.v_weight_decay * (delta.norm(dim=1) / init.norm(dim=1) ** 2)
                last = step == hp.v_num_grad_steps - 1
                loss_values, nll_values = loss.tolist(), nll.tolist()
                for b in active.nonzero().flatten().tolist():
                    if loss_values[b] < hp.v_loss_stop or last:
                        results[b] = DeltaResult(
                            delta[b].detach().clone(), init[b], step + 1, loss_values[b], nll_values[b]
                        )
                        active[b] = False
                if not active.any():
                    break
                loss[active].sum().backward()
                opt.step()
                with torch.no_grad():
                    max_norm = hp.clamp_norm_factor * init.norm(dim=1)
                    norm = delta.norm(dim=1)
                    delta.mul_(torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))[:, None])
        finally:
            if fast:
                runner.close()
    return results


class _Replay(torch.nn.Module):
    """Stands in for a frozen block below the edited one: the last one returns a precomputed
    output (with δ added when δ sits at that block's output), the others their input unchanged."""

    def __init__(self, original, output=None, edit=None):
        super().__init__()
        self.output, self.edit = output, edit
        if hasattr(original, "attention_type"):  # read by some models' layer loops
            self.attention_type = original.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if self.output is None:
            return hidden_states
        return self.output if self.edit is None else self.edit("replay", self.output)


class _FastRunner:
    """The δ-dependent part of the forward pass, and only that (see the module doc):

    - columns before the subject-last column P never depend on δ: their keys/values at every
      layer are computed once (KV cache) and each step runs only columns ≥ P;
    - blocks below the one holding the edited module never depend on δ either: their output at
      columns ≥ P is computed once and replayed (the blocks are swapped for `_Replay` stubs while
      δ is optimised, and put back after), so each step runs only blocks ≥ L (≥ L+1 when δ is
      added at block L's output, as MEMIT does);
    - the LM head runs only at the positions the loss reads, not over the whole sequence.
    """

    def __init__(self, model, module_name, ids, mask, pos, P, add_delta):
        self.model, self.module_name = model, module_name
        self.ids, self.mask, self.pos, self.P = ids, mask, pos, P
        self.add_delta = add_delta
        self.layers_name = architecture(model).layers
        self.blocks = model.get_submodule(self.layers_name)
        rest = module_name[len(self.layers_name) + 1 :] if module_name.startswith(self.layers_name + ".") else ""
        head, _, tail = rest.partition(".")
        if not head.isdigit():
            raise EditevalError(f"compute_delta: {module_name} is not inside a block of {self.layers_name}")
        block = int(head)
        at_block = tail == ""
        # first block that runs every step; δ at the last block's output: that block runs (hooked)
        self.live = block + 1 if at_block and block + 1 < len(self.blocks) else block
        self.hook = not (at_block and self.live == block + 1)
        self.base = model.base_model
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.cache, self.saved = None, []

    def _base(self, ids, pos, use_cache):
        kw = {_CACHE_KW: self.cache} if self.cache is not None else {}
        return self.base(
            input_ids=ids,
            attention_mask=self.mask[:, : self.P + ids.shape[1]],
            position_ids=pos,
            use_cache=use_cache,
            **kw,
        )

    def prepare(self):
        P = self.P
        with torch.no_grad():
            if P > 0:
                out = self.base(
                    input_ids=self.ids[:, :P],
                    attention_mask=self.mask[:, :P],
                    position_ids=self.pos[:, :P],
                    use_cache=True,
                )
                self.cache = out[_CACHE_KW] if _CACHE_KW in out else out.past_key_values
            replay = None
            if self.live > 0:
                name = f"{self.layers_name}.{self.live}"
                with Trace(self.model, [name], retain_input=True, retain_output=False, stop=True) as tr:
                    self._base(self.ids[:, P:], self.pos[:, P:], self.cache is not None)
                replay = tr.inputs[name]
                self._crop()
        if self.live > 0:
            edit = None if self.hook else self.add_delta
            self.saved = [(i, self.blocks[i]) for i in range(self.live)]
            for i, original in self.saved:
                last = i == self.live - 1
                self.blocks[i] = _Replay(original, replay if last else None, edit if last else None)

    def close(self):
        for i, original in self.saved:
            self.blocks[i] = original
        self.saved = []
        self.cache = None

    def _crop(self):
        """Cut every layer of the cache back to the P cached columns, without autograd history."""
        if self.cache is None:
            return
        for layer in getattr(self.cache, "layers", []):
            for attr in ("keys", "values"):
                value = getattr(layer, attr, None)
                if isinstance(value, torch.Tensor):
                    setattr(layer, attr, value[..., : self.P, :].detach())

    def __call__(self, positions):
        rows, cols = positions
        names = [self.module_name] if self.hook else []
        with Trace(self.model, names, retain_output=False, edit_output=self.add_delta):
            hidden = self._base(self.ids[:, self.P :], self.pos[:, self.P :], self.cache is not None)[0]
        self._crop()
        logits = self.head(hidden[rows.to(hidden.device), cols.to(hidden.device)]).to(rows.device)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _cache_keyword() -> str:
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


_CACHE_KW = _cache_keyword()


def _module_out_dim(model, module_name: str) -> int:
    module = model.get_submodule(module_name)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        # Linear: (out, in); GPT-2 Conv1D: (in, out)
        return weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0]
    return model.config.hidden_size  # a block: its output is the residual stream
