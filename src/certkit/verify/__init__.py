"""Complete verification and certification on top of :mod:`certkit.bounds`.

* :mod:`~certkit.verify.cascade`: :func:`verify_property`, the cascade attack → IBP → CROWN → α-CROWN → branch
  and bound → MILP, per input and per clause; :class:`Verdict`.
* :mod:`~certkit.verify.certify`: :func:`certify` (one method on a batch of classified inputs),
  :func:`certify_dataset` (resumable results), :func:`max_radius` (bisection on ε), :func:`summarize`.
* :mod:`~certkit.verify.bab`: branch and bound over ReLU splits with β-CROWN bounds.
* :mod:`~certkit.verify.milp`: the exact MILP encoding, solved by HiGHS.
* :mod:`~certkit.verify.vnnlib`: VNN-LIB properties and VNN-COMP answers.
"""

from certkit.verify.cascade import METHODS, STAGES, Verdict, verify_property
from certkit.verify.certify import (
    Certificate,
    certify,
    certify_dataset,
    max_radius,
    radius_dataset,
    stage_summary,
    summarize,
)

__all__ = ["METHODS", "STAGES", "Certificate", "Verdict", "certify", "certify_dataset", "max_radius", "radius_dataset",
           "stage_summary", "summarize", "verify_property"]
