"""What runs leave, read back and shown: run folders as rows (:mod:`.runs`), Markdown tables
(:mod:`.tables`) and plots (:mod:`.plots`), shared by the engine (a run's own curves and final table) and
the analysis tools (grid reports).

May import: :mod:`robust_distill.files`, :mod:`robust_distill.core` and :mod:`robust_distill.errors`.
"""
