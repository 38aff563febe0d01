"""Drive the lab by hand: python -m tests.lab up [--two-pairs]|demo|down|clean|status|shell HOST.

``down``/``clean`` remove every lab instance (PVLAB_INSTANCE, see instance.py) and a kernel
lab left behind; ``clean --this`` only the instance of this process. ``status`` shows them all."""

import os
import subprocess
import sys

from tests.lab import instance
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
        if "--this" not in argv:  # every other lab instance too, each under its own lock
            for suffix in labmod.instances():
                if suffix != instance.SUFFIX:
                    env = dict(os.environ, PVLAB_INSTANCE=suffix)
                    argv = [sys.executable, "-m", "tests.lab", "clean", "--this"]
                    subprocess.run(argv, env=env, check=True)
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
