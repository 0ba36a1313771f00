"""WISE: the activation distance, the TIES merge, routing sequence by sequence, shards saved and
merged as edits accumulate (and undone by `restore`), a real edit on SmolLM2."""

from __future__ import annotations

import pytest
import torch
from _generation import greedy
from test_rome import DARRIEUX

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.methods import get_method, restore
from editeval.methods.kit import artifacts
from editeval.methods.wise import NO_EDIT, WISEHParams, activation_distance, apply_wise, ties_merge


@pytest.fixture(autouse=True)
def benchmarks(built_zsre, monkeypatch):
    """The irrelevant rows come from the small zsre train split of conftest."""
    from editeval.runtime import paths

    monkeypatch.setattr(paths, "DEFAULT_DATASETS_DIR", built_zsre / "datasets")


def test_activation_distance_averages_real_tokens_and_takes_the_largest_of_long_sequences():
    identity = torch.nn.Identity()
    out = torch.zeros(2, 3, 2)
    cand = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [9.0, 9.0]], [[1.0, 0.0], [0.0, 2.0], [0.0, 3.0]]])
    valid = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # row 0's last token is padding
    assert torch.allclose(activation_distance(identity, out, cand, valid), torch.tensor([3.0, 2.0]))
    long = torch.zeros(1, 101, 2)
    long[0, 7] = torch.tensor([0.0, 50.0])
    dist = activation_distance(identity, torch.zeros_like(long), long, torch.ones(1, 101))
    assert dist.item() == 50.0  # over 100 tokens: the largest token's distance, not the mean


def test_ties_merge_by_hand():
    a = torch.tensor([4.0, -1.0, 2.0, -3.0])
    b = torch.tensor([-1.0, -2.0, 3.0, 0.5])
    # density 0.5 keeps a's {4, -3} and b's {-2, 3}; elected signs (sums 4, -2, 3, -3): +, -, +, -;
    # every kept entry agrees with its sign, so each is averaged with weights 1/2 over those that agree
    merged = ties_merge([a, b], density=0.5)
    assert torch.equal(merged, torch.tensor([4.0, -2.0, 3.0, -3.0]))
    # opposite signs: the entry takes the side of the larger sum, averaging only the agreeing ones
    assert torch.equal(ties_merge([torch.tensor([2.0]), torch.tensor([-1.0])], 1.0), torch.tensor([2.0]))


def test_routing_is_per_sequence_and_leaves_unrouted_sequences_bit_for_bit(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    hp = WISEHParams(layer=2, n_iter=20, context_short=1, context_long=1, irrelevant_pool=4)
    texts = [DARRIEUX["prompt"] + " English", "nq question: who wrote hamlet"]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = model(**enc).logits
    backup = apply_wise(model, tok, [DARRIEUX], hp)
    memory = artifacts.find_addition(model, "wise_memory")
    try:
        assert memory.side_eps not in (NO_EDIT, 0.0) and memory.edits == 1
        with torch.no_grad():
            both = model(**enc).logits
            alone = [model(**tok([t], return_tensors="pt")).logits for t in texts]
        # each row of the padded batch is routed as it would be alone
        for row, (text, single) in enumerate(zip(texts, alone)):
            n = single.shape[1]
            assert torch.allclose(both[row, :n], single[0], atol=1e-5), text
        memory.side_eps = 1e6  # no sequence reaches the side memory now: the base model, bit for bit
        with torch.no_grad():
            assert torch.equal(model(**enc).logits, base)
    finally:
        restore(model, backup)
    assert artifacts.additions(model) == []


def test_shards_are_saved_and_merged_and_restore_undoes_each_step(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    hp = WISEHParams(layer=2, n_iter=3, context_short=1, context_long=0, irrelevant_pool=4, save_freq=2, merge_freq=4)
    reqs = [
        empty_request(case_id=i, prompt=f"The colour of thing {i} is", target_new=colour)
        for i, colour in enumerate(["red", "green", "blue", "black", "white"])
    ]
    backups, states, shards = [], [], []
    for req in reqs:
        backups.append(apply_wise(model, tok, [req], hp))
        memory = artifacts.find_addition(model, "wise_memory")
        states.append((memory.edits, len(memory.memories), memory.side_eps == NO_EDIT, list(memory.memory_eps)))
        shards.append(list(memory.memories))
    # after 2 and 4 edits a shard is saved (fresh side memory); at 4 the two shards merge into one
    assert [s[:3] for s in states] == [(1, 0, False), (2, 1, True), (3, 1, False), (4, 1, True), (5, 1, False)]
    assert states[3][3] == [min(states[1][3] + [states[3][3][0]])]  # the merged shard keeps the least ε
    assert not torch.equal(shards[3][0], shards[1][0])  # the saved shard was merged with the second
    for k in range(4, 0, -1):  # undo the last edits one by one: each earlier state comes back
        restore(model, backups[k])
        memory = artifacts.find_addition(model, "wise_memory")
        assert (memory.edits, len(memory.memories), memory.side_eps == NO_EDIT) == states[k - 1][:3]
        assert memory.memory_eps == states[k - 1][3]
    restore(model, backups[0])
    assert artifacts.additions(model) == []


def test_bad_settings_fail_with_one_clear_error():
    with pytest.raises(EditevalError, match="multiple of save_freq"):
        WISEHParams(save_freq=300, merge_freq=1000)
    with pytest.raises(EditevalError, match="alpha, beta, gamma"):
        WISEHParams(act_margin=[1.0, 2.0])


def test_real_edit_on_smollm2(smollm2):
    """With the preset (30 steps instead of 70, to keep the test short): the edit takes, an unrelated
    prompt is not routed to the side memory and keeps its answer; `restore` removes the memory."""
    model, tok = smollm2.model, smollm2.tokenizer
    hp = get_method("wise").load_hparams(model, "smollm2-135m").replace(n_iter=30)
    keep = "The capital of Germany is"
    kept = greedy(model, tok, keep)
    assert not greedy(model, tok, DARRIEUX["prompt"]).startswith("English")
    backup = apply_wise(model, tok, [DARRIEUX], hp)
    try:
        assert greedy(model, tok, DARRIEUX["prompt"]).startswith("English")
        assert greedy(model, tok, keep) == kept
    finally:
        restore(model, backup)
    assert artifacts.additions(model) == []
