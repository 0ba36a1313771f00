"""The command-line contract, through `editeval.cli.main([...])` as a user runs it (and once in a real
subprocess): exit 0 on success; on each refusal exit 2, exactly one `error:` line on stderr and it is
the last line, no traceback, and no output file written.

(Refusals under several processes, and `train`, are covered in test_distributed.py and
test_learned_editors.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from editeval.cli import main
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request

REQS = [
    empty_request(
        case_id=i,
        subject="France",
        prompt=f"Question {i}: the capital of France is",
        target_new=["Lyon", "Rome city", "Berlin"][i % 3],
        ground_truth="Paris",
        rephrase_prompts=[f"France's capital ({i}) is"],
        locality=[{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}],
    )
    for i in range(3)
]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A built benchmark `toy` and the caches under tmp_path/env; the working directory is
    tmp_path/work (where default output paths such as results/ would land)."""
    import datasets

    folder = tmp_path / "env" / "datasets" / "toy"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(REQS, features=EDIT_REQUEST_FEATURES).to_parquet(folder / "data" / "edit.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: edit\n    path: data/edit.parquet\n---\n# toy\n"
    )
    monkeypatch.setenv("EDITEVAL_DATASETS", str(folder.parent))
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "env" / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "env" / "hf-datasets"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "ft.yaml").write_text("layers: [1]\nnum_steps: 1\nlr: 0.01\nnorm_constraint: null\n")
    return work


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def refused(argv, capsys, work) -> tuple[str, str]:
    """Run a command that must be refused: exit 2, no traceback, exactly one `error:` line and it
    is the last line of stderr (loading a model may draw a progress bar before it), nothing new
    in the working directory. Returns (the error line, stdout)."""
    before = _files(work)
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert _files(work) == before
    return errors[0], out


EXACTLY_ONE = "error: give exactly one of: a submission folder, --model PATH_OR_NAME, or --all"


# --------------------------------------------------------------------------- score: what to score


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["subs/entry", "--model", "m"],
        ["--model", "m", "--all"],
        ["subs/entry", "--all"],
        ["subs/entry", "--model", "m", "--all"],
    ],
    ids=["none", "folder+model", "model+all", "folder+all", "all-three"],
)
def test_score_needs_exactly_one_of_folder_model_all(env, capsys, args):
    (env / "subs" / "entry").mkdir(parents=True)
    line, out = refused(["score", *args, "--device", "cpu"], capsys, env)
    assert line == EXACTLY_ONE and out == ""


def test_refusal_in_a_real_process(env):
    """The same refusal from `python -m editeval`: stderr is exactly the one line (no log lines)."""
    proc = subprocess.run(
        [sys.executable, "-m", "editeval", "score"],
        cwd=env,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", EXACTLY_ONE + "\n")
    assert _files(env) == ["ft.yaml"]


# --------------------------------------------------------------------------- score --all


def _submission(root, slug, base_dir, fingerprint, checkpoint=None):
    """A submission scoring the base itself, or a checkpoint folder copied from `checkpoint`."""
    import shutil

    folder = root / slug
    shutil.copytree(base_dir, folder / "base")
    if checkpoint is not None:
        shutil.copytree(checkpoint, folder / "checkpoint")
    (folder / "submission.yaml").write_text(
        yaml.safe_dump(
            {
                "schema_version": 1,
                "title": f"{slug} entry",
                "authors": ["Ada Lovelace"],
                "contact": "ada@example.org",
                "method": {"name": "ft-m"},
                "base_model": {"name": "base", "fingerprint": fingerprint},
                "benchmark": {"name": "toy", "split": "edit"},
                "mode": "single" if checkpoint is None else "sequential",
                "num_edits": 2,
                "score": {"unedited": True} if checkpoint is None else {"checkpoint": "checkpoint"},
            }
        )
    )
    return folder


def test_score_all_reports_every_entry_then_exits_2_when_one_failed(env, tiny_llama_dir, tiny_gpt2_dir, capsys):
    from editeval.evaluation.results import read_record
    from editeval.runtime.models import load

    fingerprint = load(tiny_llama_dir, device="cpu").fingerprint()
    subs = env / "subs"
    # scored first, and fails: its checkpoint is a GPT-2, its base a LLaMA
    bad = _submission(subs, "a-other-architecture", tiny_llama_dir, fingerprint, checkpoint=tiny_gpt2_dir)
    good = _submission(subs, "b-good", tiny_llama_dir, fingerprint)
    code, out, err = run(
        ["score", "--all", "--submissions", subs, "--device", "cpu", "--piqa", "0", "--no-progress"], capsys
    )
    assert code == 2 and "Traceback" not in err
    # the failure is reported, the next entry is still scored, then the summary
    lines = out.splitlines()
    assert lines[0] == "a-other-architecture: scoring (no results.json)"
    assert (
        lines[1].startswith("a-other-architecture: failed: ")
        and "score.checkpoint: does not fit the base model: tensor 'transformer." in lines[1]
    )
    assert lines[2] == "b-good: scoring (no results.json)"
    assert lines[-1] == "1 scored, 0 up to date, 1 failed"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    why = lines[1][len("a-other-architecture: failed: ") :]
    assert errors == [f"error: 1 submission(s) failed: a-other-architecture: {why}"]
    assert err.strip().splitlines()[-1] == errors[0]
    assert read_record(good / "results.json").meta.n_edits == 2 and (good / "results.rows.parquet").is_file()
    assert sorted(p.name for p in bad.iterdir()) == ["base", "checkpoint", "submission.yaml"]  # nothing written there

    # without the failing entry: success (the good one is up to date)
    import shutil

    shutil.rmtree(bad)
    code, out, err = run(
        ["score", "--all", "--submissions", subs, "--device", "cpu", "--piqa", "0", "--no-progress"], capsys
    )
    assert code == 0 and out.splitlines()[-1] == "0 scored, 1 up to date, 0 failed"
    assert "error:" not in err


# --------------------------------------------------------------------------- --out, --hparams, --batch-size


def _edit(tiny_llama_dir, *extra):
    return [
        "edit",
        "--method",
        "ft-m",
        "--model",
        tiny_llama_dir,
        "--benchmark",
        "toy",
        "--limit",
        "2",
        "--no-generation",
        "--no-progress",
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def test_edit_runs_and_exits_0(env, tiny_llama_dir, capsys):
    from editeval.evaluation.results import read_record

    code, out, err = run(_edit(tiny_llama_dir, "--hparams", "ft.yaml", "--out", "r/run.json"), capsys)
    assert code == 0 and "error:" not in err
    assert out.splitlines()[-1] == "wrote r/run.json" and "2 edits (0 skipped)" in out
    assert read_record(env / "r" / "run.json").meta.n_edits == 2
    assert not list((env / "r").glob("*.partial*"))


def test_datasets_dir_flag_wins_over_the_environment_and_leaves_it_alone(env, tiny_llama_dir, capsys, monkeypatch):
    """--datasets-dir is resolved once when the command starts and passed down: it wins over
    $EDITEVAL_DATASETS, which stays as it was (the flag used to be handed on by changing it)."""
    from editeval.commands.options import datasets_folder
    from editeval.evaluation.results import read_record
    from editeval.runtime.paths import DEFAULT_DATASETS_DIR, datasets_dir

    built = os.environ["EDITEVAL_DATASETS"]
    monkeypatch.setenv("EDITEVAL_DATASETS", str(env / "nothing-built-here"))
    before = dict(os.environ)
    code, out, err = run(
        _edit(tiny_llama_dir, "--hparams", "ft.yaml", "--out", "r/run.json", "--datasets-dir", built), capsys
    )
    assert code == 0 and "error:" not in err
    assert read_record(env / "r" / "run.json").meta.n_edits == 2
    assert dict(os.environ) == before and datasets_folder(None) == env / "nothing-built-here"
    assert datasets_dir() == DEFAULT_DATASETS_DIR  # the library itself never reads the environment


def test_datasets_dir_flag_reaches_a_method_that_reads_a_train_split(
    env, tiny_llama_dir, capsys, monkeypatch, tmp_path
):
    """T-Patcher reads its memory from a train split inside its apply: the run's --datasets-dir is
    handed to it as an argument (`Method.edit`), with $EDITEVAL_DATASETS pointing at nothing."""
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(os.environ["EDITEVAL_DATASETS"], elsewhere)
    toy = elsewhere / "toy"
    shutil.copy(toy / "data" / "edit.parquet", toy / "data" / "train.parquet")
    card = (toy / "README.md").read_text()
    (toy / "README.md").write_text(
        card.replace(
            "path: data/edit.parquet\n", "path: data/edit.parquet\n  - split: train\n    path: data/train.parquet\n"
        )
    )
    monkeypatch.setenv("EDITEVAL_DATASETS", str(env / "nothing-built-here"))
    (env / "tp.yaml").write_text("layer: 1\nnum_steps: 2\nmemory_size: 2\nmemory_benchmark: toy\n")
    argv = ["edit", "--method", "t-patcher", "--model", tiny_llama_dir, "--benchmark", "toy", "--limit", "1"]
    argv += ["--hparams", "tp.yaml", "--device", "cpu", "--no-generation", "--no-progress", "--out", "r/tp.json"]
    code, out, err = run([*argv, "--datasets-dir", elsewhere], capsys)
    assert code == 0 and "error:" not in err and "1 edits (0 skipped)" in out
    line, _ = refused([*argv[:-1], "r/tp2.json"], capsys, env)  # without the flag: nothing built
    assert line.startswith("error: ") and "nothing-built-here" in line


@pytest.mark.parametrize("name", ["run.txt", "run", "run.json.partial"])
def test_edit_out_must_be_json(env, tiny_llama_dir, capsys, name):
    out = f"r/{name}"
    line, stdout = refused(_edit(tiny_llama_dir, "--hparams", "ft.yaml", "--out", out), capsys, env)
    assert line == f"error: --out {out}: the results record must be a .json path" and stdout == ""


def test_score_out_must_be_json(env, tiny_llama_dir, capsys):
    line, stdout = refused(
        [
            "score",
            "--model",
            tiny_llama_dir,
            "--base",
            tiny_llama_dir,
            "--benchmark",
            "toy",
            "--device",
            "cpu",
            "--piqa",
            "0",
            "--no-progress",
            "--out",
            "r/x.csv",
        ],
        capsys,
        env,
    )
    assert line == "error: --out r/x.csv: the results record must be a .json path" and stdout == ""


def test_edit_missing_hparams_file(env, tiny_llama_dir, capsys):
    line, _ = refused(_edit(tiny_llama_dir, "--hparams", "nope.yaml", "--out", "r/run.json"), capsys, env)
    assert line == "error: hyper-parameter file not found: nope.yaml"


def test_edit_bad_hparams_value(env, tiny_llama_dir, capsys):
    (env / "bad.yaml").write_text("layers: [1]\nnum_steps: many\n")
    line, _ = refused(_edit(tiny_llama_dir, "--hparams", "bad.yaml", "--out", "r/run.json"), capsys, env)
    assert line == "error: bad.yaml: num_steps: input should be a valid integer, got 'many'"


@pytest.mark.parametrize("size", ["2", "5"])
def test_edit_batch_size_in_single_mode(env, tiny_llama_dir, capsys, size):
    line, _ = refused(
        _edit(tiny_llama_dir, "--hparams", "ft.yaml", "--mode", "single", "--batch-size", size, "--out", "r/run.json"),
        capsys,
        env,
    )
    assert line == "error: --batch-size applies to --mode batch or sequential, not single"


# --------------------------------------------------------------------------- leaderboard build --out


def test_leaderboard_build_into_a_folder_that_is_not_a_site(env, capsys):
    (env / "subs").mkdir()
    code, out, err = run(["leaderboard", "build", "--submissions", "subs", "--out", "site"], capsys)
    assert code == 0 and (env / "site" / "index.html").is_file() and "error:" not in err
    assert out.startswith("built site/index.html: 0 entries")
    code, _, _ = run(["leaderboard", "build", "--submissions", "subs", "--out", "site"], capsys)
    assert code == 0  # a site built before is replaced

    precious = env / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    line, _ = refused(["leaderboard", "build", "--submissions", "subs", "--out", "home"], capsys, env)
    assert line == "error: --out home: exists and is not a leaderboard site built by editeval; not replacing it"
    assert (precious / "thesis.tex").read_text() == "do not delete" and _files(precious) == ["thesis.tex"]
    assert not [p for p in env.iterdir() if p.name.startswith(".")]  # no temporary folder left
