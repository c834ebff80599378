"""``starling experiment``: reports of online experiments from the exposure log (registered in starling/cli.py).

Transport only: the command parses options, reads the experiments config and calls
:func:`training.experiment_report.experiment_report`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from starling.cli_group import StarlingGroup


@click.group(cls=StarlingGroup)
def experiment() -> None:
    """Online experiments: A/B and interleaving reports from the exposure log and feedback."""


@experiment.command("report")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the report object as JSON instead of text.")
@click.option(
    "--window-days",
    type=click.FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Feedback counts for an exposure at most this long after it.",
)
@click.option(
    "--users-needed",
    is_flag=True,
    help="Also estimate how many users a significant result (p < 0.05) needs with 80% power (bootstrap).",
)
@click.option(
    "--signal",
    type=click.Choice(["like", "rating", "click"]),
    default="like",
    show_default=True,
    help="--users-needed: the event that counts (A/B: per exposure; interleaving: credits an arm).",
)
def experiment_report(
    workdir: Path, name: str, as_json: bool, window_days: float, users_needed: bool, signal: str
) -> None:
    """Report experiment NAME from WORKDIR's exposure log and feedback: per-arm rates with 95% intervals and
    tests against the control plus a sample-ratio-mismatch check (A/B), or the per-user difference of credits
    with a paired t-test, wins, losses and a sign test (interleaving); the plot goes to WORKDIR/reports/experiment-NAME.png."""
    from services.common.experiments import load_config
    from starling.config import get_settings
    from training.experiment_report import experiment_report as run
    from training.experiment_report import format_report

    settings = get_settings()
    definition = load_config(settings.experiments).by_name.get(name)
    shares = {arm.name: arm.share for arm in definition.arms} if definition else None
    report = run(
        workdir,
        name,
        expected_shares=shares,
        kind=definition.kind if definition else None,
        window_days=window_days,
        like_threshold=settings.like_threshold,
    )
    if users_needed:
        from training.experiment_report import users_needed as find_users_needed

        report["users_needed"] = find_users_needed(
            workdir,
            name,
            shares,
            window_days=window_days,
            like_threshold=settings.like_threshold,
            signal=signal,
        )
    text = format_report(report)
    if users_needed and not as_json:
        needed = report["users_needed"]
        found = needed["users_needed"] or f"more than {needed['tried'][-1]['users']}"
        powers = ", ".join(f"{t['users']}: {t['power']:.0%}" for t in needed["tried"])
        text += f"\nusers needed for 80% power at p < 0.05 ({signal}s, {needed['test']}): {found} (power by users: {powers})"
    click.echo(json.dumps(report, indent=2) if as_json else text)
