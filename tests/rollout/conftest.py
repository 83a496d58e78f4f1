"""Makes this folder's test tooling (``canary_loop``) and the autoscaling harness it builds on (``closed_loop``,
``hpa``) importable: pytest runs with ``--import-mode=importlib``, which puts no test folder on ``sys.path``."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _folder in (str(_HERE), str(_HERE.parent / "autoscaling")):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)
