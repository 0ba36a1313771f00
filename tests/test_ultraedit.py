"""UltraEdit: the lifelong normaliser's running statistics, the closed-form shift, the statistics
carried from edit to edit (undone with an edit), a real edit on SmolLM2."""

from __future__ import annotations

import torch
from _generation import greedy
from test_rome import DARRIEUX

from editeval.methods import get_method, restore
from editeval.methods.base import Backup
from editeval.methods.kit import edit_state
from editeval.methods.ultraedit import RunningStats, UltraEditHParams, apply_ultraedit, shift


def test_running_statistics_in_chunks_equal_those_of_all_rows():
    torch.manual_seed(0)
    rows = torch.randn(9, 5) * torch.arange(1, 6) + 3
    model = torch.nn.Linear(1, 1)
    stats = RunningStats(model, 5, Backup())
    for chunk in (rows[:1], rows[1:4], rows[4:]):  # a one-row turn adds nothing to the spread
        stats.update(chunk)
    assert stats.n.item() == 9
    assert torch.allclose(stats.mean, rows.mean(0), atol=1e-5)
    assert torch.allclose(stats.m2 / (stats.n - 1), rows.var(0), atol=1e-4)  # unbiased, as torch.var
    normalised = stats.normalise(rows)
    assert torch.allclose(normalised.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(normalised.std(0), torch.ones(5), atol=1e-4)


def test_statistics_live_in_the_edit_state_and_are_undone_with_the_edit():
    model, backup = torch.nn.Linear(1, 1), Backup()
    stats = RunningStats(model, 3, backup)
    stats.update(torch.ones(2, 3))
    stats.save()
    again = RunningStats(model, 3, Backup())
    assert again.n.item() == 2 and torch.equal(again.mean, torch.ones(3))
    for undo in reversed(backup.undo):
        undo()
    assert edit_state.get(model, "ultraedit.norm3.n") is None


def test_shift_is_the_ridge_solution_with_the_raw_keys():
    torch.manual_seed(1)
    keys, grads = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    stats = RunningStats(torch.nn.Linear(1, 1), 9, Backup())
    stats.update(torch.cat([keys, grads], 1).float())
    stats.mean, stats.m2 = stats.mean.double(), stats.m2.double()
    delta = shift(keys, grads, stats, lr=0.1)
    x_hat = stats.normalise(torch.cat([keys, grads], 1))
    values = -0.1 * x_hat[:, :6].pow(2).sum(1, keepdim=True) * x_hat[:, 6:]
    expected = torch.linalg.solve(keys.T @ keys + torch.eye(6, dtype=torch.float64), keys.T @ values)
    assert delta.shape == (6, 3) and torch.allclose(delta, expected, atol=1e-10)


def test_each_turn_moves_the_edited_layers_and_restore_undoes_weights_and_statistics(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    hp = UltraEditHParams(layers=[2, 3], lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = apply_ultraedit(model, tok, [DARRIEUX], hp)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 3)}
    width = model.config.intermediate_size + model.config.hidden_size  # [key, output gradient]
    widths = [k for k in edit_state.tensors(model) if k.endswith(".n")]
    assert widths == [f"{edit_state.PREFIX}ultraedit.norm{width}.n"]  # both layers share one normaliser
    counted = edit_state.tensors(model)[widths[0]].item()
    second = apply_ultraedit(model, tok, [DARRIEUX], hp)
    assert edit_state.tensors(model)[widths[0]].item() == 2 * counted  # the statistics accumulate
    restore(model, second)
    assert edit_state.tensors(model)[widths[0]].item() == counted
    restore(model, first)
    assert edit_state.tensors(model) == {}
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_real_edit_on_smollm2(smollm2):
    """The preset's layers at lr 1e-3 (the preset's 1e-4 takes about a third of single edits): one
    turn makes SmolLM2 answer the new object; `restore` gives back every tensor."""
    model, tok = smollm2.model, smollm2.tokenizer
    hp = get_method("ultraedit").load_hparams(model, "smollm2-135m")
    hp.lr = 1e-3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not greedy(model, tok, DARRIEUX["prompt"]).startswith("English")
    backup = apply_ultraedit(model, tok, [DARRIEUX, DARRIEUX], hp)
    try:
        assert greedy(model, tok, DARRIEUX["prompt"]).startswith("English")
    finally:
        restore(model, backup)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
