"""What every command shares: ``-c``, config loading, exit codes, error printing.

Exit codes: 0 ok, 1 a check failed (a run not archived, an archive that does not
verify), 2 usage, configuration or start-up error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from dfarchive.errors import DfArchiveError
from dfarchive.plumbing.coredumps import disable_core_dumps
from dfarchive.plumbing.logs import redact, setup_logging
from dfarchive.service.config import Config, config_path, load_config, plaintext_credentials

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file (default: $ARCHIVE_CONFIG, else ~/conf/df_archive.yaml)",
    )


def load(args: argparse.Namespace, *, log: bool = True) -> Config:
    """Load the config named on the command line and set up logging from it; warn
    about credentials it would send unencrypted."""
    config = load_config(config_path(args.config))
    if log:
        setup_logging(config.log_level, config.log_file)
    for warning in plaintext_credentials(config):
        logging.getLogger("dfarchive.service.config").warning("%s", warning)
    return config


def run_main(program: str, main: Callable[[], int]) -> None:
    """Run a command; known errors become one line on stderr and exit 2.

    Core dumps are off first: the commands that hold run keys all start here.
    """
    disable_core_dumps()
    try:
        code = main()
    except DfArchiveError as error:
        # one line, even when the error quotes a tool's multi-line stderr
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{program}: error: {redact(message)}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    logging.shutdown()
    sys.exit(code)
