"""Metric protocols against values computed by hand on tiny models (one unpadded forward per text)."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.evaluation import metrics as M
from editeval.evaluation.evaluator import Evaluator
from editeval.runtime import tokens
from editeval.runtime.models import load


def test_doctests():
    for module, least in ((M, 10), (tokens, 2)):
        failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried >= least and failures == 0, module.__name__


def test_scalar_metrics_by_hand():
    assert M.token_accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert M.locality_agreement([7, 8], [7, 8]) == 1.0
    assert M.generation_exact_match(" the Nile!", "Nile") == 1.0
    assert M.generation_exact_match(" Niles", "Nile") == 0.0
    # "a a a b": bigrams (a,a)x2 (a,b)x1 -> H = -(2/3 log 2/3 + 1/3 log 1/3); trigrams 2 distinct -> 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert M.ngram_entropy("a a a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert M.ngram_entropy("") == 0.0
    assert M.rewrite_success(1.0, 1.0)[0] == 0.0  # a tie is not a success
    assert M.neighborhood_success(2.0, 1.0) == (1.0, pytest.approx(math.exp(-1) - math.exp(-2)))
    assert M.harmonic_mean([1.0, 0.0, 1.0]) == 0.0
    assert M.piqa_choice([-3.0, -3.0], [1, 1]) == 0
    with pytest.raises(ValueError):
        M.token_accuracy([], [])


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir, device="cpu")


def _hand(model, tok, prompt, target):
    """Hand computation of the teacher-forced protocol: tokenise prompt + ' ' + target whole,
    prompt_len from the prompt alone, compare argmax[p-1:-1] with ids[p:]; and log-probs."""
    ids = tok(prompt + " " + target)["input_ids"]
    p = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    pred = logits[p - 1 : -1].argmax(-1).tolist()
    labels = ids[p:]
    lp = torch.log_softmax(logits[p - 1 : -1], -1)[torch.arange(len(labels)), torch.tensor(labels)]
    acc = sum(a == b for a, b in zip(pred, labels)) / len(labels)
    return acc, pred, -lp.mean().item()


REQUESTS = [
    empty_request(
        case_id=10,
        prompt="The Eiffel Tower is located in the city of",
        target_new="Rome",
        ground_truth="Paris",
        rephrase_prompts=["Where is the Eiffel Tower? In", "Eiffel Tower, city:"],
        locality=[{"kind": "nq", "prompt": "who wrote hamlet?", "answer": "William Shakespeare"}],
        portability=[{"kind": "one_hop", "prompt": "The Eiffel Tower's country is", "answer": "Italy"}],
    ),
    empty_request(
        case_id=11,
        prompt="Danielle Darrieux's mother tongue is",
        target_new="English language of old",
        ground_truth="French",
        rephrase_prompts=["The native language of Danielle Darrieux is"],
        locality=[
            {"kind": "nq", "prompt": "capital of germany", "answer": "Berlin"},
            {
                "kind": "distract",
                "prompt": "Danielle Darrieux's mother tongue is English. The mother tongue of Jean Gabin is",
                "answer": "French",
            },
        ],
        neighborhood_prompts=["Jean Gabin's mother tongue is", "Léa Seydoux speaks"],
    ),
]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("mixed", [False, True])
def test_teacher_forced_matches_hand_values(tiny, padding_side, mixed):
    ev = Evaluator(
        tiny,
        REQUESTS,
        batch_size=3,
        progress=False,
        use_cache=False,
        counterfact=True,
        padding_side=padding_side,
        mixed_lengths=mixed,
    )
    rows = ev.evaluate(tiny.model)
    tok, model = tiny.tokenizer, tiny.model
    for r, row in zip(REQUESTS, rows):
        assert row["case_id"] == r["case_id"]
        assert row["reliability.teacher_forced"] == _hand(model, tok, r["prompt"], r["target_new"])[0]
        gen = [_hand(model, tok, p, r["target_new"])[0] for p in r["rephrase_prompts"]]
        assert row["generalization.teacher_forced"] == pytest.approx(sum(gen) / len(gen), abs=0)
        # base model against itself: locality exactly 1
        assert row["locality.teacher_forced"] == 1.0
        # CounterFact scores: mean per-token NLL of the new and true completions
        _, _, nll_new = _hand(model, tok, r["prompt"], r["target_new"])
        _, _, nll_true = _hand(model, tok, r["prompt"], r["ground_truth"])
        assert row["efficacy_score"] == float(nll_true > nll_new)
        assert row["efficacy_magnitude"] == pytest.approx(math.exp(-nll_new) - math.exp(-nll_true), abs=1e-5)
    # multi-token targets are really multi-token
    assert len(tok(" English language of old")["input_ids"]) >= 4
    p = REQUESTS[0]["portability"][0]
    assert rows[0]["portability.one_hop.teacher_forced"] == _hand(model, tok, p["prompt"], p["answer"])[0]
    assert rows[0]["portability.teacher_forced"] == rows[0]["portability.one_hop.teacher_forced"]
    assert math.isnan(rows[1]["portability.teacher_forced"])
    nb = []
    for q in REQUESTS[1]["neighborhood_prompts"]:
        new, true = _hand(model, tok, q, "English language of old")[2], _hand(model, tok, q, "French")[2]
        nb.append(float(true < new))
    assert rows[1]["neighborhood_score"] == sum(nb) / len(nb)


def _answer_logits(model, tok, prompt, answer):
    """Logits at the answer positions of the teacher-forced sequence (one unpadded forward)."""
    ids = tok(prompt + " " + answer)["input_ids"]
    p = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, p - 1 : -1].float()


def test_locality_by_hand_on_a_changed_model(tiny, tiny_llama_dir):
    """Locality = per answer token, does the edited model's argmax equal the base model's argmax.

    The "edit" zeroes the output-embedding rows of two tokens the base model predicts at known
    answer positions (the first token of the Hamlet answer, the Jean Gabin answer). Every top-2
    logit there is positive, so the argmax changes exactly at those positions and nowhere else:
    the expected values are known before evaluating (Hamlet 1/2, Berlin 1, distract 0)."""
    tok = tiny.tokenizer
    (hamlet,), (berlin, distract) = REQUESTS[0]["locality"], REQUESTS[1]["locality"]
    entries = (hamlet, berlin, distract)
    base_logits = [_answer_logits(tiny.model, tok, e["prompt"], e["answer"]) for e in entries]
    pre = [lg.argmax(-1).tolist() for lg in base_logits]
    assert [len(x) for x in pre] == [2, 1, 1]  # "William Shakespeare" is two tokens
    flat = [t for x in pre for t in x]
    assert len(set(flat)) == len(flat)  # four different predicted tokens
    assert all((lg.topk(2, -1).values > 0).all() for lg in base_logits)  # zeroing a row moves the argmax
    removed = [pre[0][0], pre[2][0]]

    edited = load(tiny_llama_dir, device="cpu")
    head = edited.model.get_output_embeddings().weight
    assert head.data_ptr() != edited.model.get_input_embeddings().weight.data_ptr()  # not tied
    with torch.no_grad():
        head[removed] = 0.0

    # by hand: the edited model's argmax, compared position by position with the base's
    post = [_hand(edited.model, tok, e["prompt"], e["answer"])[1] for e in entries]
    hand = [sum(a == b for a, b in zip(x, y)) / len(x) for x, y in zip(pre, post)]
    assert hand == [0.5, 1.0, 0.0]
    assert post[0][1] == pre[0][1] and post[0][0] not in removed and post[2][0] not in removed

    rows = Evaluator(tiny, REQUESTS, batch_size=4, progress=False, use_cache=False).evaluate(edited.model)
    assert rows[0]["locality.nq.teacher_forced"] == 0.5
    assert rows[0]["locality.teacher_forced"] == 0.5
    assert math.isnan(rows[0]["locality.distract.teacher_forced"])  # row 0 has no distract entry
    assert rows[1]["locality.nq.teacher_forced"] == 1.0
    assert rows[1]["locality.distract.teacher_forced"] == 0.0
    assert rows[1]["locality.teacher_forced"] == 0.5  # mean over the kinds
    # the base model against itself: full agreement, whatever was zeroed in the copy
    assert [
        r["locality.teacher_forced"]
        for r in Evaluator(tiny, REQUESTS, batch_size=4, progress=False, use_cache=False).evaluate(tiny.model)
    ] == [1.0, 1.0]


# ----------------------------------------------------------------- a tokenizer merging the space


@pytest.fixture(scope="module")
def merging(tmp_path_factory):
    """A character BPE without pre-tokenisation whose merges absorb the joining space into the
    prompt's last token ('of' + ' ' -> 'of '), the reference protocol's known quirk."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ?',.:"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    merges = [("o", "f"), ("of", " "), (" ", "R"), ("R", "o"), ("Ro", "m"), ("Rom", "e"), ("i", "s"), ("is", " ")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    path = tmp_path_factory.mktemp("tiny-merging")
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return load(path, device="cpu")


def test_space_merging_tokenizer_follows_the_reference_split(merging):
    tok = merging.tokenizer
    prompt, target = "The city of", "Rome"
    joint = tok(prompt + " " + target)["input_ids"]
    alone = tok(prompt)["input_ids"]
    assert joint[: len(alone)] != alone  # the space merged into the prompt's last token
    ids, start = tokens.teacher_forced_inputs(tok, prompt, target)
    assert ids == joint and start == len(alone)
    reqs = [empty_request(case_id=0, prompt=prompt, target_new=target, rephrase_prompts=["Rome is where this is"])]
    for mixed in (False, True):
        ev = Evaluator(merging, reqs, batch_size=2, progress=False, use_cache=False, mixed_lengths=mixed)
        row = ev.evaluate(merging.model)[0]
        assert row["reliability.teacher_forced"] == _hand(merging.model, tok, prompt, target)[0]
        # generation then starts from the prompt's own tokens (fallback path), target-length tokens
        seq = ev._seqs[0]
        assert seq.gen_prompt == alone
        with torch.no_grad():
            out = merging.model.generate(
                torch.tensor([alone]),
                attention_mask=torch.ones(1, len(alone), dtype=torch.long),
                max_new_tokens=len(ids) - start,
                do_sample=False,
                pad_token_id=2,
            )
        text = tok.decode(out[0, len(alone) :], skip_special_tokens=True)
        assert row["reliability.generation"] == M.generation_exact_match(text, target)


def test_empty_span_is_clamped_to_one_token(merging):
    # 'is' + ' ' merge; a prompt ending in a space makes the prompt alone as long as the joint text
    ids, start = tokens.teacher_forced_inputs(merging.tokenizer, "x", "is")
    assert 1 <= start < len(ids)
