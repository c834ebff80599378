"""The click group every ``starling`` command group uses (starling/cli.py and the modules it registers)."""

from __future__ import annotations

import click

from starling.errors import StarlingError


class StarlingGroup(click.Group):
    """Reports :class:`StarlingError` as ``error: ...`` with exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StarlingError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
