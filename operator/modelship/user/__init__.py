"""The commands for people: find a model on the Hub, deploy it, watch it, talk to it, measure it.

`search`, `show`, `deploy`, `ls`, `status`, `chat`, `bench`, `delete`: each module holds its
commands (click only at import time; what they run is imported in their bodies, so that
`modelship --help` starts at once), on the code the operator itself runs (the resolver, the
API models), so what they show is what the operator will do. `common` has what they share:
the kubeconfig context and namespace as kubectl reads them, errors as one line, the terminal.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    from . import bench, chat, deploy, search, watch

    for module in (search, deploy, watch, chat, bench):
        for command in module.COMMANDS:
            group.add_command(command)
