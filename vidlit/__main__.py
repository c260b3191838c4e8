import os
import sys

from vidlit.commands.main import main


def _run() -> int:
    """``main()``; output cut short by the reader (``python -m vidlit report runs | head``) ends
    quietly with the shell's status for SIGPIPE, as ``cat`` does, instead of a traceback."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit must not fail again
        return 141


if __name__ == "__main__":
    sys.exit(_run())
