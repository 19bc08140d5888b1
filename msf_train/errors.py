"""One exception type for every user-facing error.

Library code raises `MsfError` with a message that says what is wrong and how to fix it; the CLIs
turn it into one line on stderr and a non-zero exit (see `msf_train.cliutil`).
"""


class MsfError(Exception):
    """A user-facing error: bad input, a missing file, a mismatched artifact."""
