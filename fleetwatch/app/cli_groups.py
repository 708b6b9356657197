"""Command groups of the CLI that route by their first argument."""

from __future__ import annotations

from typer.core import TyperGroup


class DatasetOrCommand(TyperGroup):
    """A group whose first argument is a subcommand or else a dataset name: ``evaluate smd --data DIR``
    runs the ``smd`` command, ``evaluate NAME --labels FILE`` the hidden ``dataset`` command."""

    fallback = "dataset"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and (args[0] not in self.commands or "--labels" in args):
            args = [self.fallback, *args]
        return super().parse_args(ctx, args)
