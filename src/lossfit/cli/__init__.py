"""The ``lossfit`` command.

Every command takes ``--json`` (a machine-readable summary on stdout) and ``--report DIR`` (``DIR/report.html``: one
self-contained HTML page with the loss curves on a log scale, the status and why the solver stopped, the parameters
with their uncertainties, the comparison with the closed form or reference, and the command line).

Exit codes: 0 the fit converged to a verified answer; 1 it ran but did not converge (the outputs and the report are
still written, and the status says why); 2 bad input (one line on stderr, nothing written).
"""

import importlib

from lossfit.cli.common import EXIT_BAD_INPUT, EXIT_NOT_CONVERGED, EXIT_OK, app

# Each module adds its commands to `app`; `lossfit --help` lists them in this order.
for _module in ("fitting", "solvers", "register", "cohort", "transforms", "motion", "maps", "demo"):
    importlib.import_module(f"lossfit.cli.{_module}")

__all__ = ["EXIT_BAD_INPUT", "EXIT_NOT_CONVERGED", "EXIT_OK", "app", "main"]


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()
