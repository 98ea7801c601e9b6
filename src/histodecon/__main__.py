"""Command line: ``python -m histodecon demo --out demo_output``; ``python -m histodecon --version``."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodecon import __version__


def _check_out(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not an earlier demo's output."""
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").exists():
        raise SystemExit(
            f"{out} exists, is not empty and is not the output of an earlier demo; "
            "choose another folder with --out so that nothing in it is overwritten."
        )


def _parser() -> argparse.ArgumentParser:
    """The command line's parser: ``--version`` on its own, or one command."""
    parser = argparse.ArgumentParser(prog="python -m histodecon", description=__doc__)
    # Not argparse's "version" action, which prints and exits before seeing the rest of the line:
    # `--version demo` must be refused, not answered as if the command were not there.
    parser.add_argument("--version", action="store_true", help="Print histodecon's version and exit.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    demo = commands.add_parser(
        "demo",
        help="Run the whole pipeline on synthetic slides, or on her2st when $HISTODECON_DATA_DIR names its folder.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="Folder for figures and the report.")
    demo.add_argument("--quick", action="store_true", help="Smaller slides and fewer epochs (about a minute).")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, then print the version or run the command.

    Examples
    --------
    >>> from histodecon.__main__ import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    histodecon ...
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        if args.command is not None:
            parser.error(f"--version takes no other arguments; run `python -m histodecon {args.command} ...` alone.")
        print(f"histodecon {__version__}")
        return
    if args.command is None:
        parser.error("a command is required (demo), or --version.")

    from histodecon._demo import data_dir_from_env, run

    _check_out(args.out)
    run(args.out, data_dir=data_dir_from_env(), quick=args.quick)


if __name__ == "__main__":
    main()
