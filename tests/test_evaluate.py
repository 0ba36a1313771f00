"""The batched engine: bit-identical whatever the batch size, generation = HF greedy generation,
the pre-edit cache, subsets, PIQA and fluency."""

from __future__ import annotations

import json
import math

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.evaluation.evaluator import Evaluator, evaluation_columns
from editeval.evaluation.runner import LMRunner
from editeval.runtime.models import load

WORDS = "alpha beta gamma delta river mountain city king queen language paris rome berlin".split()


def _requests(n=6):
    reqs = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        reqs.append(
            empty_request(
                case_id=100 + i,
                subject=w.title(),
                prompt=f"The {w} of {'very ' * (i % 3)}{w.title()} is",
                target_new=" ".join(WORDS[(i + 3) % len(WORDS)] for _ in range(1 + i % 3)),
                ground_truth=WORDS[(i + 5) % len(WORDS)],
                rephrase_prompts=[f"{w.title()}'s {w} is"] * (i % 2 + 1),
                locality=[
                    {"kind": "nq", "prompt": f"question {i} about {w}?", "answer": "the answer " * (1 + i % 2)},
                    {"kind": "other", "prompt": f"{w} {w}", "answer": "yes"},
                ],
                portability=[{"kind": "one_hop", "prompt": f"The {w} hop is", "answer": WORDS[i % 5]}] if i % 2 else [],
                neighborhood_prompts=[f"The {w} of Someone is"],
                generation_prompts=[f"{w.title()} is famous for"] if i < 2 else [],
            )
        )
    return reqs


PIQA = [
    {"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "eat the lid.", "label": 0},
    {"goal": "To dry hands,", "sol1": "use water", "sol2": "use a towel", "label": 1},
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load(tiny_gpt2_dir, device="cpu")


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])), k


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_bit_identical_whatever_the_batch_size(which, request):
    lm = request.getfixturevalue(which)
    reqs = _requests()
    runs = [
        Evaluator(
            lm, reqs, batch_size=bs, progress=False, use_cache=False, counterfact=True, piqa=PIQA, fluency=True
        ).evaluate(lm.model)
        for bs in (1, 3, 32)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            _same(a, b)  # exact float equality, magnitudes included
    row = runs[0][0]
    assert row["locality.teacher_forced"] == 1.0 and row["other_task.piqa_agreement"] == 1.0
    assert row["fluency.ngram_entropy"] >= 0 and math.isnan(runs[0][3]["fluency.ngram_entropy"])


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_padding_either_side_gives_the_same_token_metrics(which, request):
    lm = request.getfixturevalue(which)
    reqs = _requests()
    ref = Evaluator(lm, reqs, batch_size=4, progress=False, use_cache=False).evaluate(lm.model)
    for side in ("left", "right"):
        rows = Evaluator(
            lm, reqs, batch_size=4, progress=False, use_cache=False, mixed_lengths=True, padding_side=side
        ).evaluate(lm.model)
        for a, b in zip(ref, rows):
            # token-level metrics are argmax-based: identical across paddings; probability
            # magnitudes move in the last float32 digits with the padding's positions
            magnitudes = [k for k in a if k.endswith("_magnitude")]
            _same(
                {k: v for k, v in a.items() if k not in magnitudes}, {k: v for k, v in b.items() if k not in magnitudes}
            )
            assert [a[k] for k in magnitudes] == pytest.approx([b[k] for k in magnitudes], rel=1e-5, abs=1e-8)


def _hf_greedy(lm, prompt_ids, max_new, eos_token_id=None):
    """The oracle: Hugging Face greedy `generate` on one unpadded prompt (with `eos_token_id`, it
    stops after that token; the token itself is dropped here, as editeval's fluency does)."""
    prompt = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = lm.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=max_new,
            min_new_tokens=0,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=eos_token_id,
        )
    new = out[0, prompt.shape[1] :].tolist()
    if eos_token_id is not None and eos_token_id in new:
        new = new[: new.index(eos_token_id)]
    return new


@pytest.mark.parametrize("mixed, side", [(False, "right"), (True, "left"), (True, "right")])
@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_generation_equals_hf_greedy_generate(which, mixed, side, request):
    """Target-length greedy continuations (resumed from the teacher-forced pass's cache) equal HF
    `generate` run on each prompt alone: LLaMA (rotary, explicit positions) and GPT-2, with and
    without padded batches."""
    lm = request.getfixturevalue(which)
    ev = Evaluator(
        lm, _requests(), batch_size=5, progress=False, use_cache=False, mixed_lengths=mixed, padding_side=side
    )
    outs = ev.runner.score(lm.model, ev._seqs, list(range(ev.n_sequences)), generate=True)
    checked = resumed = 0
    for s, q in enumerate(ev._seqs):
        if not q.gen:
            continue
        n = len(q.ids) - q.start
        assert outs[s].generated == _hf_greedy(lm, q.ids[: q.start], n), s
        checked += 1
        resumed += outs[s].pred[0] != q.ids[q.start] and n > 1  # decoded beyond the teacher-forced pass
    assert checked >= 10 and resumed >= 3


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_fluency_greedy_equals_hf_generate_and_stops_at_eos(which, request, monkeypatch):
    """`LMRunner.greedy` (fluency's decoder: left padded, explicit positions, per-prompt limits) equals HF
    `generate`, with and without stopping at EOS; the fluency metric is the n-gram entropy of
    prompt + that generation."""
    from editeval.evaluation import metrics as M

    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    texts = ["The river of", "Paris is famous for its very old", "A king", "Language models often write about"]
    prompts = [tok(t)["input_ids"] for t in texts]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: left padding matters
    limits = [12, 7, 12, 10]
    runner = LMRunner(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=3)
    free = [_hf_greedy(lm, p, n) for p, n in zip(prompts, limits)]
    assert runner.greedy(lm.model, prompts, limits, stop_at_eos=False) == free
    # a token the model really produces, and follows by other tokens, stands in for EOS: stopping
    # happens, and a decoder that only dropped the token without stopping would differ
    # (first occurrences, preferably not the first token of a generation)
    _, k, i = min(
        (i == 0, k, i)
        for k, g in enumerate(free)
        for i, t in enumerate(g)
        if t not in g[:i] and any(u != t for u in g[i + 1 :])
    )
    runner.eos_id = stop = free[k][i]
    expected = [_hf_greedy(lm, p, n, eos_token_id=stop) for p, n in zip(prompts, limits)]
    assert runner.greedy(lm.model, prompts, limits, stop_at_eos=True) == expected
    assert expected[k] == free[k][:i]  # stopped early, right before the stand-in EOS
    assert any(len(e) == n for e, n in zip(expected, limits))  # another ran to its limit

    monkeypatch.setattr(M, "FLUENCY_MAX_NEW_TOKENS", 30)  # read when generating; 100 tokens only cost time
    reqs = _requests(2)  # both carry a generation prompt
    ev = Evaluator(lm, reqs, batch_size=3, progress=False, use_cache=False, fluency=True, generation=False)
    rows = ev.evaluate(lm.model)
    for r, row in zip(reqs, rows):
        (text,) = r["generation_prompts"]
        gen = _hf_greedy(lm, tok(text)["input_ids"], M.FLUENCY_MAX_NEW_TOKENS, eos_token_id=tok.eos_token_id)
        assert row["fluency.ngram_entropy"] == M.ngram_entropy(text + tok.decode(gen, skip_special_tokens=True))


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_greedy_with_a_shared_prefix_equals_hf_generate(which, request, monkeypatch):
    """Prompts opening with the same demonstrations (MQuAKE's few-shot prompts): with
    ``share_prefix`` their common opening runs once (one forward of that length, however many
    prompts), and every continuation is still HF `generate`'s on the prompt alone; prompts opening
    otherwise, in the same call, go the usual way."""
    from editeval.evaluation import runner as R

    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    demos = " ".join(f"Q: what is {w}? A: {w} is a word." for w in ("red", "blue", "tree", "stone", "river"))
    texts = [f"{demos} Q: what is {w}? A:" for w in ("a cat", "the sea", "old bread here", "x")]
    texts += ["The river of", "Paris is famous for its very old"]
    prompts = [tok(t)["input_ids"] for t in texts]
    shared = next(j for j in range(len(prompts[0])) if len({tuple(p[: j + 1]) for p in prompts[:4]}) > 1)
    assert shared >= 16
    limits = [9, 6, 9, 7, 5, 8]
    runner = LMRunner(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=4)

    lengths = []
    real = R._shared_prefix

    def spy(model, split, rows, at_least, device):
        out = real(model, split, rows, at_least, device)
        lengths.append(None if out is None else (len(rows), out[0]))
        return out

    monkeypatch.setattr(R, "_shared_prefix", spy)
    got = runner.greedy(lm.model, prompts, limits, stop_at_eos=False, share_prefix=16)
    assert got == [_hf_greedy(lm, p, n) for p, n in zip(prompts, limits)]
    assert (4, shared) in lengths  # the four prompts' common opening, run once
    assert None in lengths  # the two other prompts: no common opening, the usual padded batch


def test_preedit_cache_is_written_once_and_reused(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    reqs = _requests(3)
    first = Evaluator(tiny, reqs, progress=False, piqa=PIQA)
    files = list((tmp_path / "preedit").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["base_fingerprint"] == tiny.fingerprint()

    def boom(*a, **k):
        raise AssertionError("base model re-scored despite the cache")

    monkeypatch.setattr(LMRunner, "score", boom)
    second = Evaluator(tiny, reqs, progress=False, piqa=PIQA)
    assert second._pre_loc == first._pre_loc and second.base_piqa_accuracy == first.base_piqa_accuracy
    monkeypatch.undo()
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    Evaluator(tiny, reqs[:2], progress=False)  # other data -> another cache entry
    assert len(list((tmp_path / "preedit").glob("*.json"))) == 2


def test_subset_rows_equal_full_rows_and_locality_uses_the_base(tiny, tiny_llama_dir):
    reqs = _requests()
    ev = Evaluator(tiny, reqs, progress=False, use_cache=False)
    full = ev.evaluate(tiny.model)
    part = ev.evaluate(tiny.model, indices=[4, 1])
    _same(part[0], full[4])
    _same(part[1], full[1])
    edited = load(tiny_llama_dir, device="cpu")
    with torch.no_grad():
        edited.model.model.embed_tokens.weight.mul_(-1)  # a drastic "edit"
    rows = ev.evaluate(edited.model)
    assert sum(r["locality.teacher_forced"] for r in rows) / len(rows) < 1.0
    assert ev.evaluate(tiny.model)[0]["locality.teacher_forced"] == 1.0  # cache untouched by the edit
    with pytest.raises(IndexError):
        ev.evaluate(tiny.model, indices=[99])


def test_columns_and_options(tiny):
    reqs = _requests(2)
    ev = Evaluator(tiny, reqs, progress=False, use_cache=False, generation=False)
    rows = ev.evaluate(tiny.model)
    expected = [
        "case_id",
        "reliability.teacher_forced",
        "generalization.teacher_forced",
        "locality.teacher_forced",
        "locality.nq.teacher_forced",
        "locality.other.teacher_forced",
        "portability.teacher_forced",
        "portability.one_hop.teacher_forced",
        # CounterFact scores: on by default because the requests carry neighbourhood prompts
        "efficacy_score",
        "efficacy_magnitude",
        "paraphrase_score",
        "paraphrase_magnitude",
        "neighborhood_score",
        "neighborhood_magnitude",
    ]
    assert ev.columns == expected and [list(r) for r in rows] == [expected, expected]
    assert evaluation_columns(reqs, generation=False) == expected  # without tokenising
    assert math.isnan(rows[0]["portability.teacher_forced"]) and not math.isnan(rows[1]["portability.teacher_forced"])
    with_all = Evaluator(tiny, reqs, progress=False, use_cache=False, fluency=True, piqa=PIQA).columns
    assert with_all == (
        expected[:3]
        + ["reliability.generation", "generalization.generation"]
        + expected[3:8]
        + ["portability.generation", "portability.one_hop.generation"]
        + expected[8:]
        + ["fluency.ngram_entropy", "other_task.piqa_accuracy", "other_task.piqa_agreement"]
    )
    assert ev.locality_kinds == ["nq", "other"] and ev.portability_kinds == ["one_hop"]
    with pytest.raises(ValueError, match="target_new"):
        Evaluator(tiny, [empty_request(prompt="x")], progress=False, use_cache=False)


def test_chat_template_wraps_edit_prompts_only(tiny):
    reqs = _requests(2)
    ev = Evaluator(tiny, reqs, progress=False, use_cache=False, chat_template=True)
    tok = tiny.tokenizer
    rel = next(q for q in ev._seqs if q.role == "reliability")
    loc = next(q for q in ev._seqs if q.role == "locality")
    assert tok.decode(rel.ids).startswith("<|im_start|>") and reqs[0]["prompt"] in tok.decode(rel.ids)
    assert not tok.decode(loc.ids).startswith("<|im_start|>")
    assert ev.evaluate(tiny.model)[0]["locality.teacher_forced"] == 1.0


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_generation_paths_agree(which, request, monkeypatch):
    """Continuations decoded together from sliced caches (the usual path), or batch by batch on the
    cache itself (a cache that cannot be sliced): each path is forced in turn, checked to be the one
    taken, and both equal HF greedy `generate`; the rows are identical."""
    import transformers.cache_utils

    import editeval.evaluation.runner as E

    lm = request.getfixturevalue(which)
    reqs = _requests()
    real_kv, real_new, real_select = E._kv_tensors, E._new_cache, transformers.cache_utils.Cache.batch_select_indices
    gens, rows = {}, {}
    for sliceable in (True, False):
        calls = {"kv": [], "joined": 0, "selected": 0}

        def spy_kv(cache):
            kv = real_kv(cache)
            calls["kv"].append(kv is not None)
            return kv if sliceable else None

        def spy_new(layers):
            calls["joined"] += 1
            return real_new(layers)

        def spy_select(self, indices):
            calls["selected"] += 1
            return real_select(self, indices)

        monkeypatch.setattr(E, "_kv_tensors", spy_kv)
        monkeypatch.setattr(E, "_new_cache", spy_new)
        monkeypatch.setattr(transformers.cache_utils.Cache, "batch_select_indices", spy_select)
        ev = Evaluator(lm, reqs, batch_size=2, progress=False, use_cache=False)
        outs = ev.runner.score(lm.model, ev._seqs, list(range(ev.n_sequences)), generate=True)
        gens[sliceable] = {s: outs[s].generated for s, q in enumerate(ev._seqs) if q.gen}
        rows[sliceable] = ev.evaluate(lm.model)
        monkeypatch.undo()
        assert calls["kv"] and all(calls["kv"])  # the model's cache is a plain dynamic cache
        if sliceable:  # sliced rows of several batches joined into new caches
            assert calls["joined"] > 0 and calls["selected"] == 0
        else:  # rows selected in the model's own cache, never joined
            assert calls["joined"] == 0 and calls["selected"] > 0
    ev_seqs = Evaluator(lm, reqs, batch_size=2, progress=False, use_cache=False)._seqs
    for s, generated in gens[True].items():
        q = ev_seqs[s]
        assert generated == _hf_greedy(lm, q.ids[: q.start], len(q.ids) - q.start), s
    assert gens[False] == gens[True] and len(gens[True]) >= 10
    for a, b in zip(rows[True], rows[False]):
        _same(a, b)


def test_metric_names_parse_every_column_and_refuse_unknown_ones():
    from editeval.evaluation.specs import COUNTERFACT_AGGREGATE, MetricName

    columns = evaluation_columns(_requests(), generation=True, counterfact=True, fluency=True, piqa=True)
    for column in columns[1:] + [str(COUNTERFACT_AGGREGATE)]:
        name = MetricName.parse(column)
        assert str(name) == column and MetricName.parse(str(name.family_level())).kind is None
    assert MetricName.parse("locality.nq.teacher_forced") == MetricName("locality", "teacher_forced", "nq")
    assert MetricName.parse("efficacy_magnitude") == MetricName("efficacy", "magnitude")
    assert MetricName.parse("efficacy_score").percent and not MetricName.parse("efficacy_magnitude").percent
    for bad in ("reliability", "reliability.nq.teacher_forced", "locality.generation", "foo.teacher_forced"):
        assert MetricName.try_parse(bad) is None
        with pytest.raises(ValueError):
            MetricName.parse(bad)


def test_benchmarks_declare_their_protocols_and_train_split():
    from editeval.data.registry import BENCHMARKS
    from editeval.errors import EditevalError
    from editeval.evaluation.evaluator import run_counterfact
    from editeval.evaluation.specs import EVALUATION_PROTOCOLS, declared_protocols

    for bench in BENCHMARKS.values():
        for config in bench.configs:
            assert config.train_split is None or config.train_split in {s.name for s in config.splits}
            for split in config.splits:
                assert set(declared_protocols(bench.name, config.name, split.name)) <= set(EVALUATION_PROTOCOLS)
    assert BENCHMARKS["zsre"].train_split() == "train"
    with pytest.raises(EditevalError, match="no train split"):
        BENCHMARKS["portability"].train_split("one_hop")
    cf, plain = _requests(1), [empty_request(prompt="p", target_new="t")]
    for reqs in (cf, plain):  # a registered split decides for the requests loaded from it
        assert run_counterfact("counterfact", None, "edit", reqs, loaded=True)
        assert run_counterfact("portability", "one_hop", "counterfact", reqs, loaded=True)
        assert not run_counterfact("portability", "one_hop", "zsre", reqs, loaded=True)
    assert declared_protocols("toy", None, "edit") is None
    for loaded in (True, False):  # else (no registered split, or requests handed in) their fields do
        assert run_counterfact("toy", None, "edit", cf, loaded=loaded)
        assert not run_counterfact("toy", None, "edit", plain, loaded=loaded)
    assert run_counterfact("zsre", None, "edit", cf, loaded=False)
    assert not run_counterfact("zsre", None, "edit", plain, loaded=False)
