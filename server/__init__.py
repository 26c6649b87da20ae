"""The server side of the house, beside run_triton.sh: start it on free loopback ports
and stop it by its process group (launcher.py); reload a Python model whose stub died
(watchdog.py)."""
