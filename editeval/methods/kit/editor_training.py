"""What the learned editors (MEND, KE) share: gradients of the edit loss at the edited MLP output
projections, applying a predicted update, the meta-training loop, and the editor cache.

An *editor* is a `torch.nn.Module` (see `Editor`) that maps an edit's fine-tuning signal to a
weight update for each edited matrix W (stored here as (out × in)):

* the trainer gives it, per edited layer, the token-wise decomposition of the gradient of the
  edit loss, dL/dW = Σ_t δ_t u_tᵀ (u_t: the input of W at token t, δ_t: dL/d(output of W) at t),
  and the edit's token ids;
* it returns ΔW per layer, differentiable in its own parameters.

Meta-training (`train_editor`), on the benchmark's train split, one edit per forward:

1. pre-edit: the NLL of ``prompt + " " + target_new`` (masked to the target) gives (u, δ);
2. the editor predicts ΔW; the edited model is W + ΔW, applied by forward hooks (no copy);
3. loss = the editor's combination (`Editor.total_loss`) of
   L_edit = NLL of the target after the edit on the edit prompt and its rephrase(s), and
   L_loc = KL(p_base ‖ p_edited) over every position of the record's locality prompt + answer.
4. Adam on the editor; `batch_size` edits are accumulated per optimiser step.

Only the edited layers and above depend on ΔW: every sequence runs once through the whole model
(no grad) while the inputs of the first edited block are recorded, and every further pass
replays only the blocks from there on (`editeval.methods.kit.replay.UpperBlocks`; checked against a
full pass once, else full passes are used). Training is resumable: a checkpoint (editor, optimiser, step, running
statistics) is written every `checkpoint_every` steps and picked up by a rerun. The finished
editor is cached under ``cache_dir()/editors/<method>/<model fingerprint>/<benchmark>/`` as
``editor.safetensors`` + ``editor.json``.

The *model fingerprint* of an editor is the weights fingerprint of every parameter the editor
does not change (plus the shapes of those it changes), so an editor keeps being found while
edits accumulate on the edited matrices (sequential editing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, train_benchmark_for
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import (
    check_layer,
    layer_module_name,
    mlp_out_as_out_in,
    num_layers,
)
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import add_hook
from editeval.runtime.paths import cache_dir

log = logging.getLogger(__name__)

EDITOR_FILE = "editor.safetensors"
CONFIG_FILE = "editor.json"
CHECKPOINT_FILE = "checkpoint.pt"


class EditorHParams(HParams):
    """Settings shared by the learned editors (training and use)."""

    layers: list[int] = Field(default_factory=lambda: [-3, -2, -1])  # MLP output projections edited
    train_benchmark: str = "auto"  # whose trained editor `apply` uses (auto: from the look of the edits)
    editor_path: str | None = None  # an editor folder to use instead of the cache
    # meta-training
    train_steps: int = 1000  # edits seen in training (one edit per forward)
    batch_size: int = 1  # edits accumulated per optimiser step
    lr: float = 1e-4  # Adam, editor parameters
    grad_clip: float = 100.0
    c_edit: float = 0.1
    c_loc: float = 1.0
    max_length: int = 64  # tokens per training sequence (longer ones are cut from the left)
    checkpoint_every: int = 100
    max_minutes: float | None = None  # stop training (and save) after this much wall time
    seed: int = 0


def editor_layers(model: torch.nn.Module, hparams: EditorHParams) -> list[int]:
    n = num_layers(model)
    return sorted({check_layer(model, hparams.scale_layer(layer, n)) for layer in hparams.layers})


def edited_modules(model: torch.nn.Module, layers: list[int]) -> list[str]:
    return [layer_module_name(model, layer, "mlp_out") for layer in layers]


def out_in_shape(model: torch.nn.Module, module_name: str) -> tuple[int, int]:
    weight = model.get_submodule(module_name).weight
    return tuple(mlp_out_as_out_in(model, weight).shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- sequences


@dataclass
class _Seq:
    ids: list[int]
    start: int  # first target token (the loss covers ids[start:]); 0 for locality sequences


def _encode(tokenizer, prompt: str, target: str, max_length: int) -> _Seq:
    from editeval.runtime.tokens import teacher_forced_inputs

    ids, start = teacher_forced_inputs(tokenizer, prompt, target.strip())
    if len(ids) > max_length:  # keep the target whole: cut from the left
        cut = min(len(ids) - max_length, start - 1)
        if cut > 0:
            ids, start = ids[cut:], start - cut
    return _Seq(ids, start)


@dataclass
class TrainItem:
    edit: _Seq
    rephrases: list[_Seq]
    loc: _Seq | None
    text_ids: list[int]  # the edit as text (prompt + target), what conditioned editors read


def make_items(tokenizer, records: list[dict], max_length: int) -> list[TrainItem]:
    """One training item per usable record: the edit, its rephrases, one locality prompt
    (the record's own; else the next record's prompt with its ground truth)."""
    items = []
    for i, r in enumerate(records):
        prompt, target = (r.get("prompt") or "").strip(), (r.get("target_new") or "").strip()
        if not prompt or not target:
            continue
        edit = _encode(tokenizer, prompt, target, max_length)
        reph = [_encode(tokenizer, p, target, max_length) for p in (r.get("rephrase_prompts") or []) if p.strip()][:1]
        loc_entries = [e for e in (r.get("locality") or []) if e.get("prompt") and e.get("answer")]
        if loc_entries:
            loc = loc_entries[0]
            loc_seq = _encode(tokenizer, loc["prompt"], loc["answer"], max_length)
        else:
            other = records[(i + 1) % len(records)]
            answer = other.get("ground_truth") or other.get("target_new") or ""
            loc_seq = _encode(tokenizer, other["prompt"], answer, max_length) if other is not r and answer else None
        if loc_seq is not None:
            loc_seq = _Seq(loc_seq.ids, 1)
        items.append(TrainItem(edit, reph, loc_seq, edit.ids))
    return items


# --------------------------------------------------------------------------- hooks on the edited projections


class _Hooks:
    """Forward hooks on the edited projections: record inputs / make outputs differentiable
    (mode 'grad'), or add x @ ΔWᵀ to the output (mode 'delta', ΔW given as (out × in))."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.model, self.names = model, names
        self.mode = None
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for name in self.names:
            self._handles.append(add_hook(self.model.get_submodule(name), self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def _hook(self, name):
        def hook(module, args, output):
            if self.mode == "grad":
                self.inputs[name] = args[0].detach()
                if not output.requires_grad:
                    output = output.detach().requires_grad_(True)
                self.outputs[name] = output
                return output
            if self.mode == "delta" and name in self.deltas:
                dw = self.deltas[name]
                return output + args[0].to(dw.dtype) @ dw.T.to(args[0].device)
            return output

        return hook


def _nll(head, hidden: torch.Tensor, seq: _Seq) -> torch.Tensor:
    """Mean NLL of ids[start:] given the hidden states [1, T, H]."""
    labels = torch.tensor(seq.ids[seq.start:], device=hidden.device)
    logits = head(hidden[0, seq.start - 1: len(seq.ids) - 1]).float()
    return F.cross_entropy(logits, labels)


def edit_signal(stack: UpperBlocks, head, hooks: _Hooks, states_and_seqs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per edited module: (u [N, in], δ [N, out]) over every token of the given edit sequences,
    from the gradient of their summed target NLLs (each the mean over its target tokens)."""
    us: dict[str, list] = {n: [] for n in hooks.names}
    ds: dict[str, list] = {n: [] for n in hooks.names}
    for state, seq in states_and_seqs:
        hooks.mode, hooks.inputs, hooks.outputs = "grad", {}, {}
        with torch.enable_grad():
            loss = _nll(head, stack.hidden(state), seq)
            outs = [hooks.outputs[n] for n in hooks.names]
            grads = torch.autograd.grad(loss, outs, allow_unused=True)
        hooks.mode = None
        for n, g, o in zip(hooks.names, grads, outs):
            g = torch.zeros_like(o) if g is None else g
            us[n].append(hooks.inputs[n].reshape(-1, hooks.inputs[n].shape[-1]).float())
            ds[n].append(g.detach().reshape(-1, g.shape[-1]).float())
    return {n: (torch.cat(us[n]), torch.cat(ds[n])) for n in hooks.names}


# --------------------------------------------------------------------------- the editor interface


class Editor(torch.nn.Module):
    """Base of MEND / KE editors. Subclasses implement `forward(signal, text_ids)`."""

    method: str = ""

    def __init__(self, model: torch.nn.Module, module_names: list[str], hparams: EditorHParams):
        super().__init__()
        self.module_names = list(module_names)
        self.shapes = {n: out_in_shape(model, n) for n in module_names}

    def forward(self, signal: dict[str, tuple[torch.Tensor, torch.Tensor]], text_ids: list[list[int]],
                embed: torch.nn.Module) -> dict[str, torch.Tensor]:
        """ΔW (out × in) per edited module name."""
        raise NotImplementedError

    def total_loss(self, edit_loss: torch.Tensor, loc_loss: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def before_step(self) -> None:
        """Called after backward, before the optimiser step (e.g. to ascend on a multiplier)."""

    def observe(self, signal) -> None:
        """Training only: update running statistics from a batch of inputs."""

    def config(self) -> dict:
        return {}


# --------------------------------------------------------------------------- cache


def frozen_fingerprint(model: torch.nn.Module, module_names: list[str]) -> str:
    """Fingerprint of the parameters an editor does not change (+ the shapes of those it does)."""
    skip = {f"{n}.weight" for n in module_names}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if name not in skip and t.numel():
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def editor_dir(method: str, fingerprint: str, benchmark: str) -> Path:
    return cache_dir() / "editors" / method / fingerprint / benchmark


def model_label(model: torch.nn.Module) -> str:
    """The registered name (or folder) a model was loaded from, for messages."""
    from editeval.runtime.models import MODELS

    path = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    for name in MODELS:
        if path and Path(path).resolve() == (cache_dir() / "models" / name).resolve():
            return name
    return path or "MODEL"


def save_editor(editor: Editor, folder: Path, config: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in editor.state_dict().items()}
    for path, write in ((folder / EDITOR_FILE, lambda p: save_file(tensors, p)),
                        (folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2, default=str)))):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_editor(build, model: torch.nn.Module, tokenizer, method: str, hparams: EditorHParams,
                requests: list[dict]) -> Editor:
    """The editor trained for this model on `hparams.train_benchmark` (``auto``: the benchmark the
    `requests` look like), cached on the model object, or an EditevalError naming the command that
    trains it."""
    from safetensors.torch import load_file

    names = edited_modules(model, editor_layers(model, hparams))
    benchmark = train_benchmark_for(hparams.train_benchmark, requests)
    if hparams.editor_path:
        folder = Path(hparams.editor_path)
        key = (method, str(folder.resolve()))
    else:
        cache = getattr(model, "_editeval_fingerprints", None)
        if cache is None:
            cache = {}
            model._editeval_fingerprints = cache  # the frozen parameters never change while editing
        fp_key = tuple(names)
        if fp_key not in cache:
            cache[fp_key] = frozen_fingerprint(model, names)
        folder = editor_dir(method, cache[fp_key], benchmark)
        key = (method, str(folder))
    loaded = getattr(model, "_editeval_editors", None)
    if loaded is None:
        loaded = {}
        model._editeval_editors = loaded
    if key in loaded:
        return loaded[key]
    if not (folder / EDITOR_FILE).exists():
        raise EditevalError(
            f"no trained {method.upper()} editor for model {model_label(model)} and benchmark "
            f"'{benchmark}' (looked in {folder}): train it with "
            f"`editeval train {method} --model {model_label(model)} --benchmark {benchmark}`")
    config = json.loads((folder / CONFIG_FILE).read_text())
    train_hp = type(hparams).from_dict(config["hparams"], source=str(folder / CONFIG_FILE))
    if editor_layers(model, train_hp) != editor_layers(model, hparams):
        raise EditevalError(f"the editor in {folder} edits layers {editor_layers(model, train_hp)}, "
                            f"the hyper-parameters ask for {editor_layers(model, hparams)}")
    editor = build(model, tokenizer, names, train_hp)
    state = load_file(str(folder / EDITOR_FILE))
    try:
        editor.load_state_dict(state)
    except RuntimeError as err:
        raise EditevalError(f"{folder / EDITOR_FILE} does not fit this model: {str(err).splitlines()[0]}") from None
    editor.to(input_device(model)).eval()
    loaded[key] = editor
    return editor


# --------------------------------------------------------------------------- applying an editor


def apply_editor(model: torch.nn.Module, tokenizer, requests: list[dict], editor: Editor,
                 hparams: EditorHParams) -> Backup:
    """Edit the model's weights in place with the editor's update for these requests (all at once:
    the edit signal of every request's tokens goes into one update)."""
    if not requests:
        return {}
    names = editor.module_names
    backup = backup_parameters(model, [f"{n}.weight" for n in names])
    stack = UpperBlocks(model, editor_layers(model, hparams)[0], check_every_batch=False)
    seqs, texts = [], []
    for r in requests:
        target = (r.get("target_new") or "").strip()
        if not target:
            raise EditevalError("empty target_new")
        seq = _encode(tokenizer, r["prompt"], target, 10 ** 9)
        seqs.append(seq)
        texts.append(seq.ids)
    with frozen_for_editing(model):
        with _Hooks(model, names) as hooks:
            signal = edit_signal(stack, model.get_output_embeddings(), hooks,
                                 [(stack.record_sequence(s.ids), s) for s in seqs])
        with torch.no_grad():
            deltas = editor(signal, texts, model.get_input_embeddings())
            for n in names:
                weight = model.get_submodule(n).weight
                view = mlp_out_as_out_in(model, weight)
                view.copy_((view.float() + deltas[n].to(view.device)).to(weight.dtype))
    return backup


# --------------------------------------------------------------------------- meta-training


@dataclass
class TrainReport:
    folder: Path
    steps: int
    seconds: float
    resumed_from: int
    finished: bool
    last_losses: dict


def train_editor(method: str, build, loaded, records: list[dict], hparams: EditorHParams, benchmark: str, *,
                 out_dir: Path | None = None, progress: bool = True, fresh: bool = False) -> TrainReport:
    """Meta-train `method`'s editor on `records`; resumable; writes the editor to the cache
    (or `out_dir`)."""
    from tqdm.auto import tqdm

    model, tokenizer = loaded.model, loaded.tokenizer
    layers = editor_layers(model, hparams)
    names = edited_modules(model, layers)
    fingerprint = frozen_fingerprint(model, names)
    folder = Path(out_dir) if out_dir else editor_dir(method, fingerprint, benchmark)
    items = make_items(tokenizer, records, hparams.max_length)
    if not items:
        raise EditevalError(f"no usable training records in {benchmark}/train")
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = input_device(model)

    torch.manual_seed(hparams.seed)
    editor = build(model, tokenizer, names, hparams).to(device)
    params = [p for p in editor.parameters() if p.requires_grad]
    opt = torch.optim.Adam(editor.param_groups(hparams) if hasattr(editor, "param_groups") else params,
                           lr=hparams.lr)
    order = list(range(len(items)))
    rng = random.Random(hparams.seed)
    rng.shuffle(order)
    step, elapsed = 0, 0.0
    running: dict[str, list[float]] = {"edit": [], "loc": [], "pre": []}  # per-step losses (the last 100 are kept)
    ckpt_path = folder / CHECKPOINT_FILE
    # a rerun with more steps or another time limit continues the same run
    same_run = {k: v for k, v in hparams.to_dict().items() if k not in ("train_steps", "max_minutes", "editor_path")}
    header = {"method": method, "fingerprint": fingerprint, "benchmark": benchmark, "hparams": same_run,
              "n_items": len(items)}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if json.loads(ckpt["header"]) != json.loads(json.dumps(header, default=str)):
            raise EditevalError(f"{ckpt_path} is a checkpoint of another training run (other model, data or "
                                f"hyper-parameters): delete {folder} or pass --fresh")
        editor.load_state_dict(ckpt["editor"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
        for k, v in (ckpt.get("running") or {}).items():
            running[k] = [float(x) for x in v]
        log.info("resuming %s training at step %d from %s", method, step, ckpt_path)
    resumed_from = step
    # The visiting order is a function of the step: the loop below reshuffles `order` (from `rng`)
    # right after taking the item of every step that is a positive multiple of len(items). A resumed
    # run replays the reshuffles the interrupted run did before `step`, so it visits the items in the
    # order the uninterrupted run does.
    for _ in range(max(0, step - 1) // len(items)):
        rng.shuffle(order)

    def checkpoint():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".checkpoint.", suffix=".tmp")
        os.close(fd)
        torch.save({"header": json.dumps(header, default=str), "editor": editor.state_dict(),
                    "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "running": {k: v[-100:] for k, v in running.items()}}, tmp)
        os.replace(tmp, ckpt_path)

    stack = UpperBlocks(model, layers[0], check_every_batch=False)
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    editor.train()
    bs = max(1, hparams.batch_size)
    total = hparams.train_steps
    bar = tqdm(total=total, initial=step, desc=f"train {method}", unit="edit", disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter() - elapsed
    finished = True
    try:
        with frozen_for_editing(model), _Hooks(model, names) as hooks:
            while step < total:
                if hparams.max_minutes is not None and time.perf_counter() - t_start > 60 * hparams.max_minutes:
                    log.warning("stopping %s training at step %d: max_minutes %.1f reached", method, step,
                                hparams.max_minutes)
                    finished = step >= total
                    break
                opt.zero_grad(set_to_none=True)
                for _ in range(bs):
                    item = items[order[step % len(items)]]
                    if step and step % len(items) == 0:
                        rng.shuffle(order)
                    edit_state = stack.record_sequence(item.edit.ids)
                    signal = edit_signal(stack, head, hooks, [(edit_state, item.edit)])
                    editor.observe(signal)
                    with torch.no_grad():
                        pre_edit = _nll(head, stack.hidden(edit_state), item.edit)
                        loc_state = stack.record_sequence(item.loc.ids) if item.loc is not None else None
                        base_logp = (torch.log_softmax(head(stack.hidden(loc_state)[0]).float(), -1)
                                     if loc_state is not None else None)
                    deltas = editor(signal, [item.text_ids], embed)
                    hooks.deltas, hooks.mode = deltas, "delta"
                    edit_losses = [_nll(head, stack.hidden(edit_state), item.edit)]
                    edit_losses += [_nll(head, stack.hidden(stack.record_sequence(s.ids)), s) for s in item.rephrases]
                    edit_loss = torch.stack(edit_losses).mean()
                    if loc_state is not None:
                        post_logp = torch.log_softmax(head(stack.hidden(loc_state)[0]).float(), -1)
                        loc_loss = F.kl_div(post_logp, base_logp, log_target=True, reduction="none").sum(-1).mean()
                    else:
                        loc_loss = torch.zeros((), device=device)
                    hooks.mode, hooks.deltas = None, {}
                    loss = editor.total_loss(edit_loss, loc_loss) / bs
                    loss.backward()
                    running["edit"].append(edit_loss.item())
                    running["loc"].append(loc_loss.item())
                    running["pre"].append(pre_edit.item())
                    step += 1
                    bar.update(1)
                    if step >= total:
                        break
                editor.before_step()
                torch.nn.utils.clip_grad_norm_(params, hparams.grad_clip)
                opt.step()
                window = {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in running.items()}
                bar.set_postfix(pre=f"{window['pre']:.2f}", edit=f"{window['edit']:.2f}", loc=f"{window['loc']:.3f}")
                if step % hparams.checkpoint_every < bs or step >= total:
                    elapsed = time.perf_counter() - t_start
                    checkpoint()
    finally:
        bar.close()
        editor.eval()
    elapsed = time.perf_counter() - t_start
    checkpoint()
    window = {k: sum(v[-100:]) / max(1, len(v[-100:])) for k, v in running.items()}
    config = {**header, "hparams": hparams.to_dict(), "steps": step, "train_seconds": round(elapsed, 1), "finished": finished,
              "model": loaded.name, "last_100": window, "editor": editor.config(),
              "torch_threads": torch.get_num_threads()}
    save_editor(editor, folder, config)
    return TrainReport(folder, step, elapsed, resumed_from, finished, window)


def kaiming_(weight: torch.Tensor) -> torch.Tensor:
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight
