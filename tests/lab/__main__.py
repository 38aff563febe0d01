"""Drive the lab by hand: python -m tests.lab up|demo|down|clean|status|shell HOST."""

import os
import sys

from tests.lab import lab as labmod


def main(argv):
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        labmod.Lab().up()
        print("lab is up: hostA, hostB (python -m tests.lab shell hostA)")
    elif cmd == "demo":
        from tests.lab import demo

        demo.run()
    elif cmd in ("down", "clean"):
        from tests.kernel import klab

        labmod.Lab().down()
        klab.clean()  # a kernel lab left by a killed run (waits for one that runs)
        print("lab is down")
    elif cmd == "status":
        left = labmod.leftovers()
        print("\n".join(left) if left else "no lab is running")
    elif cmd == "shell" and len(argv) == 2:
        host = labmod.Lab().hosts[argv[1]]
        os.execvp("nsenter", host.argv(["bash", "-i"]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


sys.exit(main(sys.argv[1:]))
