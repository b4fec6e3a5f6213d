"""`classify` (or `python -m classify_cli`): classify image files with the running system."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]  # tqdm ships no stubs

from classify_cli.errors import CliError, ExitCode, UsageError
from classify_cli.files import IMAGE_EXTENSIONS, Discovery, discover
from classify_cli.output import create_writer
from classify_cli.progress import Progress
from classify_cli.runner import Run, RunOptions

logger = logging.getLogger("classify_cli")

DEFAULT_API_URL = "http://localhost:8000"
EPILOG = (
    """\
exit codes: 0 every image classified; 1 some image failed or timed out; 2 usage error or nothing to do;
3 the system cannot be reached. Folders are searched for """
    + " ".join(sorted(IMAGE_EXTENSIONS))
    + "."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="classify",
        description="Classify images with the streaming image-classification system.",
        epilog=EPILOG,
    )
    add = parser.add_argument
    add("paths", nargs="*", metavar="PATH", help="image files or folders; - reads paths from stdin")
    add(
        "--api-url",
        type=_http_url,
        default=os.environ.get("CLASSIFY_API_URL", DEFAULT_API_URL),
        help=f"the upload API (default: $CLASSIFY_API_URL, else {DEFAULT_API_URL})",
    )
    add(
        "--api-key",
        default=os.environ.get("CLASSIFY_API_KEY"),
        help="the system's API key (default: $CLASSIFY_API_KEY)",
    )
    add("--format", choices=("table", "jsonl", "csv"), default="table", help="output format (default table)")
    add("--batch-size", type=_positive_int, default=8, help="files per upload request (default 8)")
    add("--recursive", "-r", action="store_true", help="search folders' subfolders too")
    add(
        "--timeout",
        type=_positive_float,
        default=300.0,
        help="seconds to wait for results after the last upload (default 300)",
    )
    add("--top", type=_positive_int, default=1, help="labels shown per image in the table (default 1)")
    add("--no-progress", action="store_true", help="no progress bars on stderr")
    add("--verbose", "-v", action="count", default=0, help="log retries and reconnections (-vv: debug)")
    return parser


def configure_logging(verbosity: int) -> None:
    """Warnings (retries, lost streams) by default; -v adds progress notes, -vv every HTTP request."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    logging.basicConfig(level=level, format="classify: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)


def find_files(paths: Sequence[str], recursive: bool, stdin: TextIO) -> Discovery:
    """The files to classify; `UsageError` when there are none."""
    if not paths:
        raise UsageError("no files or folders given (use - to read paths from stdin)")
    found = discover(paths, recursive, stdin)
    if not found.files:
        problems = "; ".join(f"{path}: {why}" for path, why in found.problems[:3])
        raise UsageError("nothing to classify" + (f" ({problems})" if problems else ": no images found"))
    return found


def run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> ExitCode:
    """Find the files, then upload, follow and print; returns the exit code."""
    found = find_files(args.paths, args.recursive, stdin)
    names = [str(p) for p in found.files] + [p for p, _ in found.problems]
    show_progress = not args.no_progress and sys.stderr.isatty()
    options = RunOptions(args.api_url, args.api_key, args.batch_size, args.timeout)
    with Progress(len(names), show_progress, stdout) as progress:
        writer = create_writer(args.format, progress.emit, names, args.top)
        writer.start()
        # With bars on screen, log lines go through tqdm too, or they would be drawn over.
        redirect = logging_redirect_tqdm() if show_progress else contextlib.nullcontext()
        with redirect:
            return asyncio.run(Run(options, writer, progress).run(found))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)  # exits with 2 on a usage error, as argparse does
    configure_logging(args.verbose)
    try:
        return int(run(args, sys.stdin, sys.stdout))
    except CliError as e:
        print(f"classify: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("classify: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
