"""Drive the lab by hand: python -m tests.lab up [--two-pairs]|demo|down|clean|status|shell HOST."""

import os
import sys

from tests.lab import lab as labmod


def main(argv):
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        names = [h.name for h in labmod.HOSTS] if "--two-pairs" in argv else ["hostA", "hostB"]
        labmod.Lab(names).up()
        print(f"lab is up: {', '.join(names)} (python -m tests.lab shell hostA)")
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
        host = labmod.Lab([argv[1]]).hosts[argv[1]]
        os.execvp("nsenter", host.argv(["bash", "-i"]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


sys.exit(main(sys.argv[1:]))
