"""`dispatchd` commands: serve, worker, mcp, db upgrade."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from dispatchd import __version__
from dispatchd.cli import mcp as mcp_module
from dispatchd.cli import worker as worker_module
from dispatchd.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="dispatchd: task broker and work scheduler for fleets of AI agents.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: ./dispatchd.yaml if present)."),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"dispatchd: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the broker: the API and the operations listener."""
    from dispatchd.serve import run

    settings = _settings(config)
    raise typer.Exit(run(settings))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply pending database migrations and exit."""
    from dispatchd.store import open_store

    settings = _settings(config)

    async def upgrade() -> list[int]:
        store = open_store(settings.database_url, data_dir=settings.server.data_dir)
        await store.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = asyncio.run(upgrade())
    typer.echo(
        f"applied migrations: {', '.join(map(str, applied))}"
        if applied
        else "database is up to date"
    )


app.command(
    help=worker_module.WORKER_HELP,
    context_settings={"allow_interspersed_args": False},
)(worker_module.worker)


app.command(name="mcp", help=mcp_module.MCP_HELP)(mcp_module.mcp)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="dispatchd")


if __name__ == "__main__":  # pragma: no cover
    main()
