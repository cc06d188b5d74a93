"""Files: the checkpoint format and its safe reading (:mod:`.checkpoint`), atomic writes and strict reads of
the JSON/YAML a run leaves (:mod:`.atomic`), one process per output folder (:mod:`.lock`), and finding the
files of an exported (timm / Hugging Face Hub) model folder (:mod:`.hub`).

May import: :mod:`robust_distill.core` and :mod:`robust_distill.errors`.
"""
