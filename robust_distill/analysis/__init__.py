"""Experiments on top of the engine: what a researcher runs after (or around) training.

- :mod:`.bench`: the grid runner (methods x teachers x students x seeds x any key, resumable, parallel);
  :mod:`.launch`: how it starts runs (local processes, slots per GPU; submitit jobs on Slurm);
- :mod:`.report`: tables (Markdown, CSV) and figures of finished runs (read, drawn: :mod:`robust_distill.results`);
- :mod:`.unlearnable`, :mod:`.select_teacher`: the robustly unlearnable set S_U, teacher scores on it, and
  teacher selection in one call ("Why robust teachers fail", ICML 2026); :mod:`.inversion`: representation
  inversion of S_U and S_L samples (same paper; Engstrom et al. 2019);
- :mod:`.specialization`, :mod:`.subspace`, :mod:`.specialization_report`: teacher-student node alignment
  (NC, BNC, MBNC), the input subspace and epsilon_in/out, oracle robustness (Yang et al., AISTATS 2021).
  :mod:`.robust_features`: the same paper's robust-feature dataset (App. A.11, Eq. 35) for robust feature training.
- :mod:`.landscape`: the weight loss landscape along filter-normalised directions and its sharpness (Wu et al.,
  NeurIPS 2020; AdaAD, CVPR 2023, Fig. 3).

Nothing is imported here: each command imports the module it needs. May import: :mod:`robust_distill.api`,
:mod:`robust_distill.export` and every layer below them (:mod:`robust_distill.engine`, ``config``, ``data``,
``results``, ``files``, ``core``), never :mod:`robust_distill.cli`.
"""
