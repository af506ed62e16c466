"""`ctdbtool`: the admin tool, modelled on Samba's `ctdb`.

Its commands are one click group (`commands.py`; the commands on records
and on entry lists, `records.py` and `entries.py`, are loaded when one of
them runs). The command admins and event scripts run in loops, `ctdbtool
pnn`, is answered first by `quick.py` without loading click or the client
library; every other command line, and `pnn` whenever that path fails,
goes to the group.
"""

from __future__ import annotations

import sys

from tools.ctdbtool.quick import answer


def main() -> None:
    try:
        if answer(sys.argv[1:]):
            return
    except KeyboardInterrupt:  # as click says it
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    from tools.ctdbtool.commands import cli

    cli()
