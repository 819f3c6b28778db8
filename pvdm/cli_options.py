"""Options several `pvdm` subcommands share, defined once: the experiment settings and the usual
data / checkpoint / output / device arguments."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvdm.config import experiment, experiment_from_json, load_config


def positive_int(text: str) -> int:
    """argparse type of a count: a whole number >= 1, or a one-line usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


# name -> (flag, argparse keywords); ``add_options(p, name=help)`` adds them with that help text.
SHARED: dict[str, tuple[str, dict[str, Any]]] = {
    "data": ("--data", dict(required=True, type=Path)),
    "autoencoder": ("--autoencoder", dict(required=True, type=Path)),
    "out": ("--out", dict(required=True, type=Path)),
    "device": ("--device", dict(default=None)),
    "max_steps": ("--max-steps", dict(type=int)),
}
DEFAULT_HELP = {
    "data": "the data stage's folder (results/<exp>/data)",
    "autoencoder": "autoencoder checkpoint (this project's or an original .pth)",
    "out": "output folder",
    "device": "cpu, cuda, cuda:1 ... (default: this rank's GPU if any, else cpu)",
    "max_steps": "stop after this many steps (the state stays resumable)",
}


Option = tuple[str, dict[str, Any]]


def opt(flag: str, **kwargs: Any) -> Option:
    """One row of a command's options table: the flag and its argparse keywords."""
    return flag, kwargs


def shared(name: str, help: str | None = None) -> Option:
    """A row of SHARED (with its own help text if given)."""
    flag, kwargs = SHARED[name]
    return flag, {**kwargs, "help": help or DEFAULT_HELP[name]}


def add_table(p: argparse.ArgumentParser | argparse._ArgumentGroup, table: list[Option]) -> None:
    """Register a command's options from its table (one row per option)."""
    for flag, kwargs in table:
        p.add_argument(flag, **kwargs)


@dataclass(frozen=True)
class Command:
    """One `pvdm` subcommand: its name, one-line help, options table and function (whose docstring is
    the command's description); ``experiment`` adds the configuration options (--config, --exp,
    --settings, overrides)."""

    name: str
    help: str
    options: list[Option]
    func: Callable[[argparse.Namespace], None]
    experiment: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)


def register_commands(sub: argparse._SubParsersAction, commands: list[Command]) -> None:
    for c in commands:
        p = sub.add_parser(c.name, help=c.help, description=" ".join(inspect.getdoc(c.func).split()))
        if c.experiment:
            add_experiment_args(p)
        add_table(p, c.options)
        p.set_defaults(func=c.func, **c.defaults)


def add_options(p: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """Add shared options by name; ``name=help`` gives one its own help text."""
    for name in (*names, *helps):
        flag, kwargs = SHARED[name]
        p.add_argument(flag, help=helps.get(name, DEFAULT_HELP[name]), **kwargs)


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    """The config options every stage command takes."""
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file; repeat to layer files (later ones override earlier ones)",
    )
    g.add_argument("--exp", help="experiment id inside the config (optional when it holds one experiment)")
    g.add_argument(
        "--settings", metavar="JSON", help="an experiment's settings as JSON (how Snakemake rules call)"
    )
    g.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. experiments.mnist.data.resolution=32",
    )


def resolve_experiment(args: argparse.Namespace) -> tuple[str, dict]:
    if args.settings:
        if args.config or args.overrides:
            raise SystemExit("error: use either --settings or --config [overrides], not both")
        return args.exp or "experiment", experiment_from_json(args.settings)
    if not args.config:
        raise SystemExit("error: give --config YAML (e.g. config/config.yaml) or --settings JSON")
    return experiment(load_config(args.config, args.overrides), args.exp)
