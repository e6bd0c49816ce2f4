"""Progress bars on stderr, shown only on a terminal and only when asked for.

Long jobs (training, evaluation, the digits benchmark) report progress through `progress_bar`,
so `--no-progress`, a pipe or a log file all keep stderr quiet: rich draws nothing when its
console is not a terminal.
"""

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def progress_bar(
    *columns: str | ProgressColumn,
    enabled: bool = True,
    console: Console | None = None,
    transient: bool = False,
) -> Progress:
    """A rich `Progress` that is disabled unless `enabled` and its console is a terminal."""
    console = console or Console(stderr=True)
    return Progress(
        *columns,
        console=console,
        transient=transient,
        disable=not (enabled and console.is_terminal),
    )
