"""Run `rduflow` in process, as a shell would with `2>&1` and `>/dev/null` redirections."""
from __future__ import annotations

import contextlib
import io

from tools.cli import main


def run_rduflow(words: list[str]) -> tuple[int, str, str]:
    """Exit code, what reaches the pipe, and the rest of stderr, of `rduflow WORDS [2>&1] [>/dev/null]`."""
    pipe, null, stderr = io.StringIO(), io.StringIO(), io.StringIO()
    fd1, fd2, argv = pipe, stderr, []
    for word in words:
        if word == "2>&1":
            fd2 = fd1
        elif word in (">/dev/null", "1>/dev/null"):
            fd1 = null
        else:
            argv.append(word)
    with contextlib.redirect_stdout(fd1), contextlib.redirect_stderr(fd2):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, pipe.getvalue(), stderr.getvalue()
