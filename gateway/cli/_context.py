"""What every subcommand shares: settings built once from the command line, env and file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..settings import Settings, load_settings


@dataclass
class CliContext:
    config_file: Path | None
    home: Path | None
    _settings: Settings | None = field(default=None, init=False)

    def settings(self, **overrides: Any) -> Settings:
        if self._settings is None or overrides:
            if self.home is not None:
                overrides["home"] = str(self.home)
            self._settings = load_settings(config_file=self.config_file, overrides=overrides)
        return self._settings

    @property
    def uses_embedded_default(self) -> bool:
        """No config file anywhere: run the embedded demo default."""
        import os

        return self.config_file is None and not os.environ.get("WARDGATE_CONFIG") and not Path("wardgate.toml").exists()


pass_cli = click.make_pass_decorator(CliContext)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    click.echo("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(value.ljust(w) for value, w in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))
