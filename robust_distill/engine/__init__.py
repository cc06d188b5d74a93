"""The engine: a training run from a resolved configuration to its checkpoints and metrics.

Owns the training loop (:mod:`.trainer`), per-sample evaluation under attacks (:mod:`.evaluation`), networks
trained beside the student (:mod:`.trained`), the fast paths (:mod:`.compilation`, :mod:`.fastpath`), step
diagnostics and the non-finite guard (:mod:`.monitor`), torchrun and child processes (:mod:`.distributed`,
:mod:`.processes`), progress output and loggers (:mod:`.progress`, :mod:`.tracking`) and channel pruning
(:mod:`.pruning`). Methods and plugins never see it: they get a ``RunContext`` and a ``Step``.

May import: :mod:`robust_distill.config`, :mod:`~robust_distill.data`, :mod:`~robust_distill.results`,
:mod:`~robust_distill.files`, :mod:`~robust_distill.core` and :mod:`~robust_distill.errors`.
"""
