"""A small ZsRE train split for the methods that read one (IKE's demonstrations, T-Patcher's memory)."""

from __future__ import annotations

from pathlib import Path

# the first records of ZsRE's train split (IKE's demonstrations, T-Patcher's memory)
ZSRE_TRAIN = [
    (
        "What is the product made by UniFirst?",
        "unmanned aircraft",
        "What will be the product of UniFirst?",
        "nq question: john goodman's character in the big lebowski",
        "Walter Sobchak",
    ),
    (
        "What is the name of the constellation which Delta Serpentis belongs?",
        "Virgo",
        "What's the name of the constellation that Delta Serpentis belongs to?",
        "nq question: subjects transferred from state list to concurrent list",
        "Education",
    ),
    (
        "When was WEFS established?",
        "1997",
        "When has WEFS been established?",
        "nq question: who voiced gaston in beauty and the beast 1991",
        "American actor and singer Richard White",
    ),
    (
        "Which person was the head of government of Munich?",
        "Bruno Granier",
        "Who was the director of Munich?",
        "nq question: who made the song i like to move it",
        "Reel 2 Real",
    ),
    (
        "Which college or university is related with Joe Hall Morris?",
        "Harvard University",
        "Which college or university is related to Joe Hall Morris?",
        "nq question: where is the fbi's authority written down",
        "Title 28 of the United States Code",
    ),
    (
        "What production company was involved in Sambhav Asambhav?",
        "Reliance Entertainment",
        "The Sambhav Asambhav production company is what?",
        "nq question: what was michael jordan's scoring average in his last year of high school",
        "29.2 points",
    ),
    (
        "Who was the designor of Albert and Edith Adelman House?",
        "Frank Gehry",
        "Who made Albert and Edith Adelman House?",
        "nq question: who appoints members of the fed's board of governors",
        "President of the United States",
    ),
    (
        "What is the university where Hassan Naim went?",
        "Harvard University",
        "What's the university where Hassan Naim went?",
        "nq question: where is there's something about mary filmed",
        "Miami, Florida",
    ),
    (
        "What kind of occupation does George Stretton have?",
        "architect",
        "What kind of occupation has George Stretton?",
        "nq question: who is the highest paid actor for one movie",
        "Keanu Reeves",
    ),
    (
        "What date is associated with Golaghat massacre?",
        "14 May 1971",
        "What's the full date that Golaghat massacre crashed?",
        "nq question: when did the post 9/11 gi bill start",
        "August 1, 2009",
    ),
    (
        "In which country did Madeleine Biardeau live?",
        "Belgium",
        "In what country did Madeleine Biardeau live?",
        "nq question: who is playing the half time super bowl 2018",
        "Justin Timberlake",
    ),
    (
        "What was Magic Slim's career?",
        "musician",
        "How was Magic Slim's career?",
        "nq question: who sings the sons of anarchy theme song",
        "Curtis Stigers & The Forest Rangers",
    ),
]


def train_requests() -> list[dict]:
    """ZSRE_TRAIN as edit requests (what a learned method trains on)."""
    from editeval.data.schema import empty_request

    return [
        empty_request(
            case_id=i,
            prompt=p,
            target_new=t,
            ground_truth="",
            rephrase_prompts=[r],
            locality=[{"kind": "nq", "prompt": q, "answer": a}],
        )
        for i, (p, t, r, q, a) in enumerate(ZSRE_TRAIN)
    ]


def write_zsre_train(root: Path) -> Path:
    """Build `zsre` with only a train split (ZSRE_TRAIN) under root/datasets, as `datasets build` lays it out."""
    import datasets
    from editeval.data.schema import EDIT_REQUEST_FEATURES

    folder = root / "datasets" / "zsre"
    (folder / "data").mkdir(parents=True)
    records = train_requests()
    datasets.Dataset.from_list(records, features=EDIT_REQUEST_FEATURES).to_parquet(folder / "data" / "train.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/train.parquet\n---\n# zsre (a test train split)\n"
    )
    return root
