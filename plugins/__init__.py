"""The plugins that ship with robust-distill (installed as the package ``robust_distill_plugins``).

Each module is one plugin, registered through the ``robust_distill`` entry-point group exactly as a
third-party plugin would be (see ``setup.cfg``). ``example_third_party/`` is not part of this package:
it is a separate distribution showing how to write one.
"""
