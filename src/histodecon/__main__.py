"""Command line: ``python -m histodecon demo --out demo_output``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _check_out(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not an earlier demo's output."""
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").exists():
        raise SystemExit(
            f"{out} exists, is not empty and is not the output of an earlier demo; "
            "choose another folder with --out so that nothing in it is overwritten."
        )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the demo."""
    parser = argparse.ArgumentParser(prog="python -m histodecon", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="Run the whole pipeline on synthetic slides, or on her2st when $HISTODECON_DATA_DIR names its folder.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="Folder for figures and the report.")
    demo.add_argument("--quick", action="store_true", help="Smaller slides and fewer epochs (about a minute).")
    args = parser.parse_args(argv)

    from histodecon._demo import data_dir_from_env, run

    _check_out(args.out)
    run(args.out, data_dir=data_dir_from_env(), quick=args.quick)


if __name__ == "__main__":
    main()
