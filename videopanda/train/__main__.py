"""`python -m videopanda.train ...` (what the launchers run under torchrun): the same as `videopanda train ...`.

The process ends with `os._exit` after the exit handlers have run: Gloo's worker threads can still be freeing
the tensors of a finished collective when the interpreter shuts down, and a thread that needs the GIL then
aborts the process (SIGABRT, "terminate called without an active exception"), which would replace the exit
status the run decided on."""
import atexit
import os
import sys

from videopanda.train.cli import main

status = main()
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
