"""``python -m vlbench``: the command line, with a Ctrl-C during its first imports handled as
everywhere else (one line, exit status 130)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("vlbench: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
