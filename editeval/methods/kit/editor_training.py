"""Meta-training the learned editors (MEND, KE) on a benchmark's train split; resumable.

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
full pass once, else full passes are used).
Training is resumable: a checkpoint (editor, optimiser, step, running statistics) is written
every `checkpoint_every` steps and picked up by a rerun. The finished editor is written to the
cache (`editeval.methods.kit.editor_cache`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from editeval.errors import EditevalError
from editeval.methods.kit.editor_cache import editor_dir, frozen_fingerprint, save_editor
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.learned_editor import (
    EditHooks,
    EditorHParams,
    Seq,
    edit_signal,
    edited_modules,
    editor_layers,
    encode_sequence,
    target_nll,
)
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.models import input_device
from editeval.runtime.paths import atomic_file

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainItem:
    edit: Seq
    rephrases: list[Seq]
    loc: Seq | None
    text_ids: list[int]  # the edit as text (prompt + target), what conditioned editors read


def make_items(tokenizer, records: list[dict], max_length: int) -> list[TrainItem]:
    """One training item per usable record: the edit, its rephrases, one locality prompt
    (the record's own; else the next record's prompt with its ground truth)."""
    items = []
    for i, r in enumerate(records):
        prompt, target = (r.get("prompt") or "").strip(), (r.get("target_new") or "").strip()
        if not prompt or not target:
            continue
        edit = encode_sequence(tokenizer, prompt, target, max_length)
        reph = [
            encode_sequence(tokenizer, p, target, max_length) for p in (r.get("rephrase_prompts") or []) if p.strip()
        ][:1]
        loc_entries = [e for e in (r.get("locality") or []) if e.get("prompt") and e.get("answer")]
        if loc_entries:
            loc = loc_entries[0]
            loc_seq = encode_sequence(tokenizer, loc["prompt"], loc["answer"], max_length)
        else:
            other = records[(i + 1) % len(records)]
            answer = other.get("ground_truth") or other.get("target_new") or ""
            loc_seq = (
                encode_sequence(tokenizer, other["prompt"], answer, max_length) if other is not r and answer else None
            )
        if loc_seq is not None:
            loc_seq = Seq(loc_seq.ids, 1)
        items.append(TrainItem(edit, reph, loc_seq, edit.ids))
    return items


# --------------------------------------------------------------------------- meta-training


@dataclass
class TrainReport:
    folder: Path
    steps: int
    seconds: float
    resumed_from: int
    finished: bool
    last_losses: dict


def _resume(ckpt_path: Path, header: dict, editor, opt, running: dict, device, folder: Path) -> tuple[int, float]:
    """Load the checkpoint of an interrupted run of the same training into `editor`, `opt` and
    `running`; ``(step, elapsed)`` of it. Refused if it is of another training run."""
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
    if json.loads(ckpt["header"]) != json.loads(json.dumps(header, default=str)):
        raise EditevalError(
            f"{ckpt_path} is a checkpoint of another training run (other model, data or "
            f"hyper-parameters): delete {folder} or pass --fresh"
        )
    editor.load_state_dict(ckpt["editor"])
    opt.load_state_dict(ckpt["optimizer"])
    step, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
    for k, v in (ckpt.get("running") or {}).items():
        running[k] = [float(x) for x in v]
    log.info("resuming %s training at step %d from %s", header["method"], step, ckpt_path)
    return step, elapsed


def _write_checkpoint(ckpt_path: Path, header: dict, editor, opt, step: int, elapsed: float, running: dict) -> None:
    """The training state (editor, optimiser, step, running losses), written atomically."""
    state = {
        "header": json.dumps(header, default=str),
        "editor": editor.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "elapsed": elapsed,
        "running": {k: v[-100:] for k, v in running.items()},
    }
    atomic_file(ckpt_path, lambda tmp: torch.save(state, tmp))


def _item_losses(item: TrainItem, editor, stack: UpperBlocks, head, embed, hooks, device):
    """``(edit_loss, loc_loss, pre_edit)`` of one training edit: the editor's ΔW from the edit's
    signal, the targets' loss under it (edit + rephrases), the KL to the base model on the
    locality sequence, and the edit's loss before the edit."""
    edit_state = stack.record_sequence(item.edit.ids)
    signal = edit_signal(stack, head, hooks, [(edit_state, item.edit)])
    editor.observe(signal)
    with torch.no_grad():
        pre_edit = target_nll(head, stack.hidden(edit_state), item.edit)
        loc_state = stack.record_sequence(item.loc.ids) if item.loc is not None else None
        base_logp = torch.log_softmax(head(stack.hidden(loc_state)[0]).float(), -1) if loc_state is not None else None
    deltas = editor(signal, [item.text_ids], embed)
    hooks.deltas, hooks.mode = deltas, "delta"
    edit_losses = [target_nll(head, stack.hidden(edit_state), item.edit)]
    edit_losses += [target_nll(head, stack.hidden(stack.record_sequence(s.ids)), s) for s in item.rephrases]
    edit_loss = torch.stack(edit_losses).mean()
    if loc_state is not None:
        post_logp = torch.log_softmax(head(stack.hidden(loc_state)[0]).float(), -1)
        loc_loss = F.kl_div(post_logp, base_logp, log_target=True, reduction="none").sum(-1).mean()
    else:
        loc_loss = torch.zeros((), device=device)
    hooks.mode, hooks.deltas = None, {}
    return edit_loss, loc_loss, pre_edit


def train_editor(
    method: str,
    build,
    loaded,
    records: list[dict],
    hparams: EditorHParams,
    benchmark: str,
    *,
    out_dir: Path | None = None,
    progress: bool = True,
    fresh: bool = False,
) -> TrainReport:
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
    opt = torch.optim.Adam(editor.param_groups(hparams) if hasattr(editor, "param_groups") else params, lr=hparams.lr)
    order = list(range(len(items)))
    rng = random.Random(hparams.seed)
    rng.shuffle(order)
    step, elapsed = 0, 0.0
    running: dict[str, list[float]] = {"edit": [], "loc": [], "pre": []}  # per-step losses (the last 100 are kept)
    ckpt_path = folder / CHECKPOINT_FILE
    # a rerun with more steps or another time limit continues the same run
    same_run = {k: v for k, v in hparams.to_dict().items() if k not in ("train_steps", "max_minutes", "editor_path")}
    header = {
        "method": method,
        "fingerprint": fingerprint,
        "benchmark": benchmark,
        "hparams": same_run,
        "n_items": len(items),
    }
    if ckpt_path.exists():
        step, elapsed = _resume(ckpt_path, header, editor, opt, running, device, folder)
    resumed_from = step
    # The visiting order is a function of the step: the loop below reshuffles `order` (from `rng`)
    # right after taking the item of every step that is a positive multiple of len(items). A resumed
    # run replays the reshuffles the interrupted run did before `step`, so it visits the items in the
    # order the uninterrupted run does.
    for _ in range(max(0, step - 1) // len(items)):
        rng.shuffle(order)

    def checkpoint():
        _write_checkpoint(ckpt_path, header, editor, opt, step, elapsed, running)

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
        with frozen_for_editing(model), EditHooks(model, names) as hooks:
            while step < total:
                if hparams.max_minutes is not None and time.perf_counter() - t_start > 60 * hparams.max_minutes:
                    log.warning(
                        "stopping %s training at step %d: max_minutes %.1f reached", method, step, hparams.max_minutes
                    )
                    finished = step >= total
                    break
                opt.zero_grad(set_to_none=True)
                for _ in range(bs):
                    item = items[order[step % len(items)]]
                    if step and step % len(items) == 0:
                        rng.shuffle(order)
                    edit_loss, loc_loss, pre_edit = _item_losses(item, editor, stack, head, embed, hooks, device)
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
    config = {
        **header,
        "hparams": hparams.to_dict(),
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "finished": finished,
        "model": loaded.name,
        "last_100": window,
        "editor": editor.config(),
        "torch_threads": torch.get_num_threads(),
    }
    save_editor(editor, folder, config)
    return TrainReport(folder, step, elapsed, resumed_from, finished, window)
