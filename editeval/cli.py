"""The `editeval` command line. Each command group lives in its own module under
`editeval/commands/` and is registered here; heavy imports happen inside the commands."""

from __future__ import annotations

import logging
import os
import sys
import time

import typer

from editeval.errors import EditevalError

app = typer.Typer(
    help="editeval: knowledge-editing benchmarks, reference methods, scoring and leaderboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from editeval.commands import datasets

    app.add_typer(datasets.app, name="datasets")
    from editeval.commands import score

    app.command("score")(score.score)
    from editeval.commands import leaderboard, submit

    app.add_typer(submit.app, name="submit")
    app.add_typer(leaderboard.app, name="leaderboard")
    from editeval.commands import edit

    app.command("edit")(edit.edit)
    from editeval.commands import train

    app.command("train")(train.train)
    from editeval.commands import stats

    app.add_typer(stats.app, name="stats")


_register()


# A launcher stops every process of a run as soon as one exits: a process that leaves the error line
# to the main process waits this long before exiting, so that it does not cut the main one short.
QUIET_EXIT_WAIT_S = 30.0
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")  # gloo, when another process exited


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as done:
        if done.code in (0, None):
            from editeval.runtime.distributed import finish

            finish()
        raise
    except EditevalError as err:
        from editeval.runtime.distributed import reports_errors

        if reports_errors():  # in a data-parallel run, an error every process meets is printed once
            print(f"error: {err}", file=sys.stderr)
        else:
            time.sleep(QUIET_EXIT_WAIT_S)
        sys.exit(2)
    except RuntimeError as err:
        from editeval.runtime.distributed import num_processes

        if num_processes() > 1 and any(s in str(err) for s in _PEER_GONE):
            # another process of the run failed and printed why; this one lost it on the way. It lingers
            # (the launcher stops it) so that the launcher names the other as the cause, and leaves
            # without tearing down the broken process group, which would abort the process
            time.sleep(QUIET_EXIT_WAIT_S)
            os._exit(1)
        raise


if __name__ == "__main__":
    main()
