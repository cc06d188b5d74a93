"""The plugin API: what a plugin implements and what it builds with.

Owns the extension points (:mod:`.hookspecs`, the ``hookimpl``/``hookspec`` markers), the base classes a plugin
subclasses and the method recipe (:mod:`.components`: ``TeacherSource``, ``InnerAttack``, ``OuterLoss``, ...,
``Method``, ``Part``), what a part sees of a run (:mod:`.context` ``RunContext``, :mod:`.step` ``Step``), the
threat model (:mod:`.threat`), the shared maths (:mod:`.losses`: KL with explicit reductions; :mod:`.attacks`:
the one PGD loop; :mod:`.precision`), cheap checks a part runs before any work (:mod:`.preflight`), the name
registries (:mod:`.registry`) and the plugin manager that loads plugins and calls their hooks (:mod:`.manager`).

May import: :mod:`robust_distill.errors`, torch and pluggy; nothing else of the project (every other layer
imports this one). Plugins import these names from ``robust_distill`` itself, the public API.
"""
