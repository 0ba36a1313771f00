"""QAEdit's scorer ("The Mirage of Model Editing", Yang et al., ACL 2025): the named protocol
``qaedit.wild``, a view of columns the WILD protocol already computes.

QAEdit's records are ordinary edit requests (`editeval.data.qaedit`), and ``editeval edit
--benchmark qaedit --wild`` (or ``editeval score ... --wild``) computes exactly the authors'
protocol (their ``edit.py`` and ``test_prediction_acc_real``), so nothing here generates anything:

==========================  =========================================================================
column                      the authors' figure
==========================  =========================================================================
``reliability.wild``        the question (``prompt``) asked as is, greedy to a natural stop (EOS,
                            ``.``, newline; 50 new tokens), exact match with ``target_new`` after
                            SQuAD normalisation: their reliability without an API key
``generalization.wild``     the same on the rephrased question (``rephrase``)
``locality.wild``           the first locality question (``locality[0]``, the only one they score):
                            the edited model's normalised answer equals the unedited model's (their
                            code compares the generated token ids)
``*.wild_judge``            with ``--judge MODEL``: a local judge's verdict, where they ask
                            GPT-4o-mini (`editeval.evaluation.judge`)
==========================  =========================================================================

``*.wild_contains`` (the target as a whole-word span of the answer) is computed beside it; it is
not the authors'. Without ``--wild`` a QAEdit run has only the teacher-forced columns, which are not
the authors' protocol: the commands say so in one line.
"""

from __future__ import annotations

from editeval.evaluation.specs import WILD, WILD_JUDGE, MetricName

PROTOCOL = "qaedit.wild"
HEADLINE = tuple(str(MetricName(family, WILD)) for family in ("reliability", "generalization", "locality"))
JUDGED = tuple(str(MetricName(family, WILD_JUDGE)) for family in ("reliability", "generalization"))
WITHOUT_WILD = (
    f"note: QAEdit's authors score it by {PROTOCOL} (add --wild); this run has the teacher-forced columns only"
)


def protocol_columns(metrics) -> list[str]:
    """The columns of the QAEdit protocol a record has (`metrics`: its metric names), in order."""
    return [name for name in (*HEADLINE, *JUDGED) if name in metrics]
