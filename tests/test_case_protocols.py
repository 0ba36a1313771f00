"""The authors' scorers of MQuAKE, RippleEdits and QAEdit, and the case mode that runs them.

- Each scorer against a case computed by hand from the authors' description (strings in, numbers
  out), its prompts and answer parsing, and its metric names (registered: records build, their
  figures check against their rows, the RippleEdits aggregate included).
- `editeval edit --benchmark mquake|rippleedits` on a tiny LLaMA: one row per case, a case's edits
  applied together (one call, or one after another) and undone, a resumed run that edits only
  what is left, an edit that changes a case's row; `editeval score` on the unedited model; bad
  input as one `error:` line. QAEdit: its WILD questions are the authors' (question, rephrase,
  first locality question) and `--wild` gives the protocol's columns.

Benchmarks built from ../shared/data/raw once per module (about 2 s) where a test needs them."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest

from editeval.evaluation import mquake as MQ
from editeval.evaluation import rippleedits as RE

NAN = float("nan")


def cli(capsys, *argv):
    """`editeval ARGV` in-process; (exit code, stdout, stderr lines)."""
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err.strip().splitlines()


def test_doctests():
    from editeval.evaluation import cases

    for module, least in ((MQ, 8), (RE, 3), (cases, 0)):
        failures, tried = doctest.testmod(module)
        assert tried >= least and failures == 0, module.__name__


# ---------------------------------------------------------------------------- MQuAKE by hand

# MQuAKE-hard case 7417 as SOURCES.md shows it (aliases shortened)
HEY_JUDE = {
    "case_id": 7417,
    "questions": [
        'What is the official language of the country of citizenship of the director/manager of "Hey Jude"\'s performer?',
        'Which language is the official language of the country of citizenship of the manager/director of the performer of "Hey Jude"?',
        'What language is official in the country of citizenship of the manager/director of the performer of the song "Hey Jude"?',
    ],
    "answer": "English",
    "answer_alias": ["en", "eng", "English language"],
    "answer_extended": [],
    "new_answer": "Arabic",
    "new_answer_alias": ["ar", "Arabian language", "Arabic language"],
    "single_hops": [
        {"question": "Who performed Hey Jude?", "cloze": "", "answer": "The Beatles", "answer_alias": ["Beatles"]},
        {"question": "Who is the director of The Beatles?", "cloze": "", "answer": "Brian Epstein", "answer_alias": []},
    ],
    "new_single_hops": [
        {"question": "Who performed Hey Jude?", "cloze": "", "answer": "Madonna", "answer_alias": ["Madonna Ciccone"]},
        {"question": "Who is the director of Madonna?", "cloze": "", "answer": "Narendra Modi", "answer_alias": []},
    ],
    "orig": {
        "triples": [["Q607742", "P175", "Q1299"], ["Q1299", "P1037", "Q193105"]],
        "new_triples": [["Q607742", "P175", "Q1744"], ["Q1744", "P1037", "Q1058"]],
    },
}


def test_mquake_case_by_hand():
    """Any of the 3 answers right counts; exact after normalisation, never a substring; every hop
    right for hop-wise; the `_original` columns against the answers before editing."""
    answers = MQ.CaseAnswers(
        multihop=["English", "the Arabic language.", "I do not know"],  # 2nd: alias "Arabic language"
        cot=["", "arabic", "Arabic script"],  # "arabic" = "Arabic"; "Arabic script" is no answer of either
        new_hops=["Madonna Ciccone", "narendra modi"],
        hops=["Beatles", "Paul McCartney"],  # the second old hop wrong
    )
    assert MQ.case_row(HEY_JUDE, answers) == {
        "mquake.multihop": 1.0,
        "mquake.cot": 1.0,
        "mquake.hopwise": 1.0,
        "mquake.multihop_original": 1.0,  # "English"
        "mquake.cot_original": 0.0,
        "mquake.hopwise_original": 0.0,
    }
    wrong = MQ.CaseAnswers(
        multihop=["Arabic script", "Arab", ""], cot=["", "", ""], new_hops=["Madonna", "Modi"], hops=["", ""]
    )
    assert set(MQ.case_row(HEY_JUDE, wrong).values()) == {0.0}
    assert not MQ.is_correct("", "", [])  # an empty answer never matches, even an empty gold


def test_mquake_prompts_and_parsing():
    demos = "Q: Who is the spouse of Joe Biden? A: Jill Biden\nQ: Who was Chevrolet Biscayne created by? A: Chevrolet"
    assert MQ.multihop_prompt(demos, "Who performed Hey Jude?") == demos + "\nQ: Who performed Hey Jude? A:"
    assert MQ.line_answer(" Washington, D.C.\nQ: next") == "Washington, D.C."  # a period does not end it
    cot = " Hey Jude was performed by Madonna. The director of Madonna is Narendra Modi.\nAnswer: Arabic\n"
    assert MQ.cot_answer(cot) == "Arabic" and MQ.cot_finished(cot)
    assert not MQ.cot_finished(cot.rstrip("\n"))  # the answer line is not finished before its newline
    assert MQ.cot_finished(" I am not sure.\n\nQuestion: Who")  # the next demo begun: no answer
    assert MQ.cot_answer(" I am not sure.\n\nQuestion: Who") == ""


def test_mquake_rows_ask_the_authors_prompts(monkeypatch, tokenizer):
    """`rows` asks each question after the right demos (the multi-hop file, each hop's relation's
    8 demos, the chain-of-thought file) and reads the answers back into the case's row."""
    multihop, cot_demos = "Q: m? A: m", "Question: c?\nThoughts: t.\nAnswer: c"
    relations = {"P175": "Q: Who performed Pete? A: Jim Cummings", "P1037": "Q: Who is the director of X? A: Y"}
    protocol = MQ.MQuAKEProtocol(tokenizer, None, {"multihop": multihop, "multihop_cot": cot_demos}, relations)
    said = {
        MQ.multihop_prompt(multihop, HEY_JUDE["questions"][2]): " Arabic\n",
        MQ.multihop_prompt(relations["P175"], "Who performed Hey Jude?"): " Madonna\n",
        MQ.multihop_prompt(relations["P1037"], "Who is the director of Madonna?"): " Narendra Modi\n",
        MQ.multihop_prompt(relations["P1037"], "Who is the director of The Beatles?"): " Brian Epstein\n",
        MQ.cot_prompt(cot_demos, HEY_JUDE["questions"][0]): " t.\nAnswer: English\n",
    }
    asked = []

    def fake(runner, tokenizer, model, prompts, max_new, queries=None, **stops):
        asked.append((list(prompts), max_new))
        # an in-context method's retrieval sees the question alone, never the demos before it
        assert [q in p and not q.startswith(("Q:", "Question:")) for p, q in zip(prompts, queries)] == [True] * len(
            prompts
        )
        assert set(queries) <= set(HEY_JUDE["questions"]) | {
            h["question"] for k in ("single_hops", "new_single_hops") for h in HEY_JUDE[k]
        }
        return [said.get(p, " no idea\n") for p in prompts]

    monkeypatch.setattr(MQ, "continuations", fake)
    (row,) = protocol.rows(None, [HEY_JUDE])
    assert row == {
        "case_id": 7417,
        "mquake.multihop": 1.0,
        "mquake.cot": 0.0,
        "mquake.hopwise": 1.0,
        "mquake.multihop_original": 0.0,
        "mquake.cot_original": 1.0,
        # "Who performed Hey Jude?" is asked once for both chains: Madonna, not The Beatles
        "mquake.hopwise_original": 0.0,
    }
    assert [n for _, n in asked] == [MQ.MAX_NEW_TOKENS, MQ.COT_MAX_NEW_TOKENS]
    assert len(asked[0][0]) == 3 + 2 + 2 and len(asked[1][0]) == 3


def test_an_in_context_prefix_is_chosen_by_the_question(monkeypatch, tokenizer):
    """`continuations` puts an in-context method's prefix (IKE's nearest stored fact) before the
    whole prompt, chosen for the query given with it (a MQuAKE question, not the demos before it
    that would swamp the retrieval); without queries, for the prompt itself."""
    import torch

    from editeval.evaluation import cases as C

    seen = []
    monkeypatch.setattr(C, "prompt_transform", lambda model: lambda q: seen.append(q) or f"[{q}] ")

    class Runner:
        def greedy(self, model, ids, limits, **kw):
            self.texts = [tokenizer.decode(i) for i in ids]
            return [[] for _ in ids]

    runner = Runner()
    demos = "Q: Who wrote Hamlet? A: William Shakespeare"
    prompts = [MQ.multihop_prompt(demos, q) for q in ("Who is A?", "Who is B?", "Who is A?")]
    C.continuations(runner, tokenizer, torch.nn.Identity(), prompts, 5, queries=["Who is A?", "Who is B?", "Who is A?"])
    assert seen == ["Who is A?", "Who is B?"]  # a repeated (prompt, question) is asked once
    assert runner.texts == [f"[Who is A?] {prompts[0]}", f"[Who is B?] {prompts[1]}"]
    seen.clear()
    C.continuations(runner, tokenizer, torch.nn.Identity(), prompts[:1], 5)
    assert seen == [prompts[0]]


# ---------------------------------------------------------------------------- RippleEdits by hand

FACT = "The name of the country of citizenship of Leonardo DiCaprio is"


def _q(prompt, *answers):
    return {"prompt": prompt, "answers": [{"value": v, "aliases": list(a)} for v, *a in answers]}


def _t(queries, conditions=(), condition="OR"):
    return {"test_queries": list(queries), "test_condition": condition, "condition_queries": list(conditions)}


RIPPLE_CASE = {
    "case_id": 0,
    "prompt": FACT,
    "target_new": "Syria",
    "target_new_aliases": ["Syrian Arab Republic"],
    "relation_specificity": [
        _t([_q("The eye color of Leonardo DiCaprio is", ("blue", "blue-eyed"))], [_q("Eye?", ("blue",))]),
        _t([_q("The mother of Leonardo DiCaprio is", ("Irmelin Indenbirken",))], [_q("Mother?", ("Irmelin",))]),
    ],
    "compositionality_i": [
        _t([_q("Currency?", ("Syrian pound", "SYP")), _q("Capital?", ("Damascus",))]),  # OR: one passes
        _t([_q("Currency?", ("Syrian pound", "SYP")), _q("Capital?", ("Damascus",))], condition="AND"),
    ],
    "compositionality_ii": [
        _t([_q("Gender?", ("male", "m"))]),  # a one-letter alias is dropped by the authors
        _t([_q(FACT, ("Leonardo",))]),  # the output is the prompt and its continuation: in the prompt
    ],
    "logical_generalization": [_t([_q("No currency?")])],  # no answers: passes whatever is said
    "subject_aliasing": [_t([_q("Leo's country?", ("Syria",))])],  # case-sensitive: "syria" fails
    "forgetfulness": [],
}
BASE = {"Eye?": "Eye? blue", "Mother?": "Mother? Jane"}  # the unedited model: the second condition fails
EDITED = {
    FACT: FACT + " Syria.",
    "The eye color of Leonardo DiCaprio is": "The eye color of Leonardo DiCaprio is blue-eyed.",
    "The mother of Leonardo DiCaprio is": "The mother of Leonardo DiCaprio is Irmelin Indenbirken",
    "Currency?": "Currency? the lira",
    "Capital?": "Capital? Damascus",
    "Gender?": "Gender? m",
    "No currency?": "No currency? none",
    "Leo's country?": "Leo's country? syria",
}


def test_rippleedits_case_by_hand():
    row = RE.case_row(RIPPLE_CASE, BASE, EDITED)
    expected = {
        "rippleedits.edit": 1.0,
        "rippleedits.logical_generalization": 1.0,
        "rippleedits.compositionality_i": 0.5,  # OR passes, AND fails
        "rippleedits.compositionality_ii": 0.5,  # "m" dropped; "Leonardo" is in the prompt
        "rippleedits.subject_aliasing": 0.0,
        "rippleedits.relation_specificity": 1.0,  # the mother test is not executed (condition failed)
        "rippleedits.forgetfulness": NAN,  # no test
    }
    assert list(row) == list(RE.COLUMNS)
    for column, value in expected.items():
        assert row[column] == value or (math.isnan(value) and math.isnan(row[column])), column
    # the edit failed (no "Syria" after the fact's prompt): its criteria are left out, as the authors do
    failed = RE.case_row(RIPPLE_CASE, BASE, {**EDITED, FACT: FACT + " Italy."})
    assert failed["rippleedits.edit"] == 0.0 and all(math.isnan(failed[c]) for c in RE.CRITERIA)
    # the authors' length: len(prompt in characters) + 30 tokens in all, the prompt's tokens included
    assert RE._max_new("abcd", 3) == 31


def test_rippleedits_overall_is_the_mean_of_the_criteria():
    from editeval.evaluation.results import build_record, disagreements

    rows = [
        {"case_id": 0, **RE.case_row(RIPPLE_CASE, BASE, EDITED)},
        {"case_id": 1, **RE.case_row(RIPPLE_CASE, BASE, {**EDITED, FACT: FACT + " Italy."})},
    ]
    record = build_record(rows, {"benchmark": "rippleedits"})
    assert record.metrics["rippleedits.edit"].mean == 0.5
    assert record.metrics["rippleedits.compositionality_i"].count == 1  # the failed edit is left out
    assert record.metrics["rippleedits.forgetfulness"].mean is None
    assert record.aggregates == {"rippleedits.overall": pytest.approx((1.0 + 0.5 + 0.5 + 0.0 + 1.0) / 5)}
    assert disagreements(record, rows) == []
    record.aggregates["rippleedits.overall"] = 0.9
    assert disagreements(record, rows) == [f"rippleedits.overall: the record says 0.9, its rows give {0.6}"]


def test_case_metrics_are_registered():
    from editeval.evaluation.specs import MetricName
    from editeval.leaderboard.records import Stat

    for name in (*MQ.COLUMNS, *RE.COLUMNS, "rippleedits.overall"):
        metric = MetricName.parse(name)
        assert str(metric) == name and metric.kind is None and metric.percent
        assert Stat(name, 0.5).display == "50.0"  # the site shows them as percentages
    with pytest.raises(ValueError, match="has no protocol 'multihops'"):
        MetricName.parse("mquake.multihops")


# ---------------------------------------------------------------------------- QAEdit


def test_qaedit_wild_questions_are_the_authors():
    """A QAEdit request's WILD questions: the question as is, its rephrase, and the first locality
    question only (its answer unused) — the authors' reliability, generalization and locality."""
    from editeval.data.schema import empty_request
    from editeval.evaluation.qaedit import HEADLINE, protocol_columns
    from editeval.evaluation.requests import GEN, LOC, REL
    from editeval.evaluation.wild import wild_prompts

    request = empty_request(
        prompt="who has the most 70 point games in nba history?",
        target_new="Wilt Chamberlain *",
        rephrase_prompts=["Which NBA player holds the record for the most games scoring 70 points or more?"],
        locality=[{"kind": "nq", "prompt": "who is the saint that protects police officers", "answer": "Michael"}],
    )
    asked = [(p.role, p.question, p.answer, p.chat) for p in wild_prompts([request], chat_template=False)]
    assert asked == [
        (REL, request["prompt"], "Wilt Chamberlain *", False),
        (GEN, request["rephrase_prompts"][0], "Wilt Chamberlain *", False),
        (LOC, "who is the saint that protects police officers", "", False),
    ]
    assert HEADLINE == ("reliability.wild", "generalization.wild", "locality.wild")
    assert protocol_columns({"reliability.wild": 0, "locality.wild": 0, "x": 0}) == [
        "reliability.wild",
        "locality.wild",
    ]


# ---------------------------------------------------------------------------- on a tiny model


@pytest.fixture(scope="module")
def hf_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-datasets-cache")


@pytest.fixture
def hf_cache(hf_cache_dir, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache_dir))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf_cache_dir))


@pytest.fixture(scope="module")
def built(tmp_path_factory, hf_cache_dir):
    from editeval.data.build import build_benchmarks
    from editeval.runtime.paths import raw_data_dir

    if not (raw_data_dir() / "SOURCES.md").is_file():
        pytest.skip("raw benchmark data (../shared/data/raw) not found")
    out = tmp_path_factory.mktemp("datasets")
    build_benchmarks(("mquake", "rippleedits", "qaedit"), out_dir=out, progress=False)
    return out


@pytest.fixture
def run_dir(tmp_path, monkeypatch, hf_cache):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ft.yaml").write_text("layers: [1]\nnum_steps: 1\nlr: 0.01\nnorm_constraint: null\n")
    return tmp_path


def _edit(capsys, built, model_dir, benchmark, *extra):
    return cli(
        capsys,
        "edit",
        "--method",
        "ft-m",
        "--model",
        model_dir,
        "--benchmark",
        benchmark,
        "--hparams",
        "ft.yaml",
        "--datasets-dir",
        built,
        "--no-progress",
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    )


class Interrupted(Exception):
    pass


@pytest.mark.needs_raw
def test_edit_mquake_one_row_per_case_and_resume(built, tiny_llama_dir, run_dir, capsys, monkeypatch):
    """Each case's 4 edits in one call (FT-M edits in batches); a run interrupted in its second case
    resumes there, and a finished record continued with a larger --limit edits only the new case."""
    from editeval.cli import main
    from editeval.evaluation.results import read_record, read_rows
    from editeval.run import cases as C

    calls, stop_at = [], [7428]
    real = C.apply_case

    def spy(method, loaded, hparams, requests, datasets_dir=None):
        calls.append([r["case_id"] for r in requests])
        if requests[0]["case_id"] in stop_at:
            stop_at.clear()
            raise Interrupted  # as if the run were killed while editing this case
        return real(method, loaded, hparams, requests, datasets_dir)

    monkeypatch.setattr(C, "apply_case", spy)
    args = ["edit", "--method", "ft-m", "--model", str(tiny_llama_dir), "--benchmark", "mquake", "--hparams", "ft.yaml"]
    args += ["--datasets-dir", str(built), "--no-progress", "--device", "cpu", "--threads", "1", "--out", "mq.json"]
    with pytest.raises(Interrupted):
        main([*args, "--limit", "2"])
    assert (run_dir / "mq.json.partial.jsonl").exists() and not (run_dir / "mq.json").exists()
    capsys.readouterr()
    code, out, err = cli(capsys, *args, "--limit", "2")
    assert code == 0, err
    assert calls == [[7417] * 4, [7428] * 4, [7428] * 4]  # the first case was not edited again
    assert out.splitlines()[0].startswith("2 cases (0 skipped), ") and "mquake.multihop 0.000" in out
    first = read_rows("mq.json", timings=False)
    code, out, err = cli(capsys, *args, "--limit", "3")
    assert code == 0, err
    assert calls[3:] == [[7430] * 4]  # the finished record's two cases carried over
    record, rows = read_record("mq.json"), read_rows("mq.json")
    assert list(rows.columns) == ["case_id", *MQ.COLUMNS, "seconds.edit", "seconds.evaluate"]
    assert list(rows["case_id"]) == [7417, 7428, 7430]
    assert rows.iloc[:2][list(first.columns)].equals(first)
    assert set(rows[list(MQ.COLUMNS)].stack()) <= {0.0, 1.0}
    meta = record.meta
    assert (meta.n_edits, meta.n_requests, meta.mode, meta.method) == (3, 3, "single", "ft-m")
    assert meta.evaluated == "after each case's edits (applied together), then undone"
    assert set(record.metrics) == set(MQ.COLUMNS) and not list(run_dir.glob("*.partial*"))


@pytest.mark.needs_raw
def test_a_method_without_batches_edits_one_after_another_and_undoes_all(built, tiny_llama, run_dir, monkeypatch):
    from editeval.methods.base import get_method
    from editeval.run import cases as C
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.runtime.settings import Runtime

    ftm, sizes = get_method("ft-m"), []

    def apply(model, tokenizer, requests, hparams):
        sizes.append(len(requests))
        return ftm.apply(model, tokenizer, requests, hparams)

    monkeypatch.setattr(C, "get_method", lambda name: dataclasses.replace(ftm, batch=False, apply=apply))
    before = tiny_llama.fingerprint()
    opts = EditConfig(method="ft-m", model="tiny", benchmark="mquake", limit=1, hparams_path="ft.yaml", out="one.json")
    summary = run_edits(opts, Runtime(device="cpu", progress=False, datasets_dir=built), loaded=tiny_llama)
    assert sizes == [1, 1, 1, 1] and summary.n_edited == 1
    assert tiny_llama.fingerprint() == before  # all four undone


@pytest.mark.needs_raw
def test_edits_change_a_case_row(built, tiny_llama, run_dir):
    """A RippleEdits case and a MQuAKE case made for a tiny LLaMA: unedited, nothing is right; with
    the case's edits applied together, the edit holds and the tests / hops that follow pass."""
    from editeval.data.mquake import case_requests
    from editeval.data.schema import empty_request
    from editeval.run.config import EditConfig, ScoreConfig
    from editeval.run.editing import run_edits
    from editeval.run.scoring import run_checkpoint
    from editeval.runtime.settings import Runtime

    runtime = Runtime(device="cpu", progress=False, datasets_dir=built)
    (run_dir / "strong.yaml").write_text("layers: [1, 2, 3]\nnum_steps: 40\nlr: 0.05\nnorm_constraint: null\n")
    ripple = {
        **empty_request(case_id=0, subject="Leonardo DiCaprio", prompt=FACT, target_new="Syria"),
        "target_new_aliases": [],
        **{c: [] for c in ("compositionality_i", "compositionality_ii", "subject_aliasing", "forgetfulness")},
        "logical_generalization": [_t([_q(FACT, ("Syria",))], [_q("No currency?")])],  # condition always holds
        "relation_specificity": [_t([_q(FACT, ("United States",))])],
    }

    def rows(benchmark, case, edited: bool):
        common = dict(benchmark=benchmark, limit=1, out=f"{benchmark}-{edited}.json")
        if edited:
            opts = EditConfig(method="ft-m", model="tiny", hparams_path="strong.yaml", **common)
            return run_edits(opts, runtime, loaded=tiny_llama, requests=[case]).record.metrics
        score = ScoreConfig(model=str(tiny_llama.name), base=str(tiny_llama.name), **common)
        return run_checkpoint(score, runtime, requests=[case])[0].metrics

    def means(metrics):
        return {k: m.mean for k, m in metrics.items()}

    assert means(rows("rippleedits", ripple, edited=False))["rippleedits.edit"] == 0.0
    after = means(rows("rippleedits", ripple, edited=True))
    assert after["rippleedits.edit"] == 1.0 and after["rippleedits.logical_generalization"] == 1.0
    assert after["rippleedits.relation_specificity"] == 0.0 and after["rippleedits.forgetfulness"] is None

    # MQuAKE: two edits teach the first hop's and a question's answer line (the target ends the line,
    # as the demos do); hop-wise and multi-hop both need their edit
    from editeval.data import load_benchmark

    demos = {r["relation_id"]: r["demos"] for r in load_benchmark("mquake", "relations", "relations", built)}
    fewshot = {r["name"]: r["text"] for r in load_benchmark("mquake", "files", "prompts", built)}["multihop"]
    hop = MQ.multihop_prompt(demos["P175"], "Who performed Hey Jude?")
    question = MQ.multihop_prompt(fewshot, HEY_JUDE["questions"][0])
    edit = {"subject": "Hey Jude", "ground_truth": "", "relation_id": "P175"}
    mquake = {
        **HEY_JUDE,
        "single_hops": HEY_JUDE["single_hops"][:1],
        "new_single_hops": HEY_JUDE["new_single_hops"][:1],
        "orig": {k: v[:1] for k, v in HEY_JUDE["orig"].items()},
        "edits": [
            {**edit, "prompt": hop, "prompt_template": hop.replace("Hey Jude", "{}"), "target_new": "Madonna\n"},
            {**edit, "prompt": question, "prompt_template": question, "target_new": "Arabic\n"},
        ],
    }
    assert len(case_requests(mquake)) == 2
    before = means(rows("mquake", mquake, edited=False))
    assert before["mquake.hopwise"] == before["mquake.multihop"] == 0.0
    after = means(rows("mquake", mquake, edited=True))
    assert after["mquake.hopwise"] == after["mquake.multihop"] == 1.0


@pytest.mark.needs_raw
def test_score_the_unedited_model(built, tiny_llama_dir, run_dir, capsys):
    """`editeval score` on a case benchmark: every case scored on the checkpoint (here the unedited
    model itself, the "no edit" row), with the same columns as an edit run."""
    from editeval.evaluation.results import read_record, read_rows
    from editeval.leaderboard import records

    for benchmark, columns in (("mquake", MQ.COLUMNS), ("rippleedits", RE.COLUMNS)):
        code, out, err = cli(
            capsys,
            "score",
            "--model",
            tiny_llama_dir,
            "--base",
            tiny_llama_dir,
            "--benchmark",
            benchmark,
            "--limit",
            "2",
            "--datasets-dir",
            built,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
            "--out",
            f"{benchmark}.json",
        )
        assert code == 0, err
        assert out.startswith(f"{benchmark}/edit: 2 cases, {tiny_llama_dir} vs base {tiny_llama_dir}")
        record = read_record(f"{benchmark}.json")
        assert list(read_rows(f"{benchmark}.json").columns) == ["case_id", *columns]
        assert record.meta.edited_fingerprint == record.meta.base_fingerprint and record.meta.piqa_items == 0
        view = records.read(f"{benchmark}.json")  # the leaderboard reads it: its figures are its rows'
        assert {name for name, _ in view.headline_stats()} >= set(columns)
    assert record.metrics["rippleedits.edit"].mean == 0.0  # an unedited model states no new fact


@pytest.mark.needs_raw
@pytest.mark.parametrize(
    "extra,line",
    [
        (
            ("--mode", "batch"),
            "error: --mode batch: mquake cases are edited one case at a time (--mode single: each case's "
            "edits applied together, scored, then undone)",
        ),
        (
            ("--wild",),
            "error: --wild does not apply to mquake: its cases are scored by the authors' protocol "
            "(mquake.* metrics), not by the per-request protocols",
        ),
        (
            ("--config", "prompts", "--split", "files"),
            "error: benchmark 'mquake' config 'prompts' split 'files' is not a split of mquake cases "
            "(missing case_id, edits, questions, answer, new_answer, single_hops, new_single_hops, orig)",
        ),
    ],
)
def test_bad_input_is_one_error_line(built, tiny_llama_dir, run_dir, capsys, extra, line):
    code, _, err = _edit(capsys, built, tiny_llama_dir, "mquake", "--limit", "1", *extra)
    assert code != 0 and err == [line]
    assert not list(run_dir.glob("results/*"))


@pytest.mark.needs_raw
def test_a_case_the_method_cannot_edit(built, tiny_llama, run_dir, monkeypatch):
    """A method that needs the subject in each prompt: a case with one edit lacking it is skipped
    with the reason; a run with no case left is refused in one line."""
    from editeval.data import load_benchmark
    from editeval.errors import EditevalError
    from editeval.methods.base import get_method
    from editeval.run import cases as C
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.runtime.settings import Runtime

    needs_subject = dataclasses.replace(get_method("ft-m"), needs_subject=True)
    monkeypatch.setattr(C, "get_method", lambda name: needs_subject)
    good, bad = load_benchmark("mquake", "edit", None, built).select(range(2)).to_list()
    bad["edits"][2]["subject"] = "Nobody"
    runtime = Runtime(device="cpu", progress=False, datasets_dir=built)
    opts = EditConfig(method="ft-m", model="tiny", benchmark="mquake", hparams_path="ft.yaml", out="s.json")
    summary = run_edits(opts, runtime, loaded=tiny_llama, requests=[good, bad])
    reason = f"edit 3 of 4: subject 'Nobody' does not occur in the prompt {bad['edits'][2]['prompt']!r}"
    assert summary.n_edited == 1 and summary.skipped == [{"index": 1, "case_id": bad["case_id"], "reason": reason}]
    assert summary.record.meta.skipped == summary.skipped
    with pytest.raises(EditevalError) as err:
        run_edits(opts.model_copy(update={"out": "t.json"}), runtime, loaded=tiny_llama, requests=[bad])
    assert (
        str(err.value)
        == f"none of the 1 mquake cases can be edited by 'ft-m' (first problem: case {bad['case_id']}: {reason})"
    )


@pytest.mark.needs_raw
def test_qaedit_wild_gives_the_protocol_columns(built, tiny_llama_dir, run_dir, capsys):
    """`editeval edit --benchmark qaedit --wild` already is the authors' protocol: the record has
    its columns and the command prints them; without --wild it says what is missing."""
    from editeval.evaluation.qaedit import HEADLINE, WITHOUT_WILD
    from editeval.evaluation.results import read_record

    code, out, err = _edit(capsys, built, tiny_llama_dir, "qaedit", "--limit", "1", "--wild", "--no-generation")
    assert code == 0, err
    record = read_record("results/ft-m-qaedit-edit-single.json")
    assert set(HEADLINE) | {"locality.nq.wild"} <= set(record.metrics)
    assert all(f"{name} " in out.splitlines()[0] for name in HEADLINE)
    code, out, err = _edit(capsys, built, tiny_llama_dir, "qaedit", "--limit", "1", "--no-generation")
    assert code == 0 and WITHOUT_WILD in out.splitlines()


@pytest.mark.needs_raw
def test_a_case_benchmark_goes_through_the_submission_system(built, tiny_llama_dir, run_dir):
    """A method entry and the unedited entry on MQuAKE: scored from their submission.yaml (the first
    `num_edits` *cases*), up to date afterwards, and shown in a table of their own, ranked by
    multi-hop accuracy with the authors' columns."""
    import shutil

    import yaml

    from editeval.leaderboard.checks import check_submission
    from editeval.leaderboard.site import collect, make_tables, markdown_tables
    from editeval.leaderboard.submissions import Current, score_submission, staleness
    from editeval.runtime.models import load
    from editeval.runtime.settings import Runtime

    fingerprint = load(tiny_llama_dir, device="cpu").fingerprint()
    subs = run_dir / "subs"
    for slug, method, score in (
        ("base-mq", "unedited", {"unedited": True}),
        ("ftm-mq", "ft-m", {"hparams": "hp.yaml"}),
    ):
        folder = subs / slug
        shutil.copytree(tiny_llama_dir, folder / "base")
        shutil.copy(run_dir / "ft.yaml", folder / "hp.yaml")
        manifest = {
            "schema_version": 1,
            "title": f"{method} on MQuAKE",
            "authors": ["Test Author"],
            "contact": "test@example.org",
            "method": {"name": method},
            "base_model": {"name": "base", "fingerprint": fingerprint},
            "benchmark": {"name": "mquake", "split": "edit"},
            "mode": "single",
            "num_edits": 2,
            "score": score,
        }
        (folder / "submission.yaml").write_text(yaml.safe_dump(manifest))
        runtime = Runtime(device="cpu", progress=False, datasets_dir=built)
        record = score_submission(folder, runtime=runtime, piqa_items=0)
        assert (record.meta.n_edits, record.meta.benchmark, record.meta.submission) == (2, "mquake", slug)
        assert set(record.metrics) == set(MQ.COLUMNS)
        assert staleness(check_submission(folder), Current(datasets_dir=built)) is None

    entries, invalid = collect(subs)
    assert not invalid
    (table,) = make_tables(entries)
    assert (table.score_label, table.unit) == ("Multi-hop", "Cases")
    assert [c["label"] for c in table.columns] == ["Multi-hop (CoT)", "Hop-wise", "Old answer"]
    assert [e.average for e in table.entries] == [
        e.record.value("mquake.multihop") for e in table.entries
    ]  # ranked by the headline metric, not the four-family average
    text = markdown_tables(subs)
    assert "| # | entry | method | cases | Multi-hop (CoT) | Hop-wise | Old answer | Multi-hop | s/edit |" in text
    assert "MQuAKE multi-hop accuracy" in text
