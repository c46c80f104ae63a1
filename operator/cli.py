"""The `modelship` command.

Subcommands of the product live here. Other installed distributions add their own
through the `modelship.commands` entry-point group (the test bed adds `testbed`), so the
product never imports them and works without them.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from . import __version__


class PluginGroup(click.Group):
    """A click group whose extra subcommands come from entry points, loaded only when named."""

    def _plugins(self) -> dict:
        return {ep.name: ep for ep in entry_points(group="modelship.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self._plugins():
            cmd = self._plugins()[name].load()
        return cmd


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelship")
def main() -> None:
    """Serve Hugging Face models on Kubernetes."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)
