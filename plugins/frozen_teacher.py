"""The default teacher updater: teachers never change (eval mode, no parameter requires grad)."""

from __future__ import annotations

from robust_distill import TeacherUpdater, hookimpl


class Frozen(TeacherUpdater):
    """Teachers stay as loaded: ``eval()`` (BN running statistics frozen) and ``requires_grad=False``."""

    def constant_teachers(self, roles: frozenset[str]) -> frozenset[str]:
        return roles

    def setup(self, run) -> None:
        for role, teacher in run.teachers.items():
            if teacher.training or any(p.requires_grad for p in teacher.parameters()):
                raise RuntimeError(
                    f"Teacher {role!r} is not frozen (training={teacher.training}); a teacher source must "
                    "return a model in eval mode without trainable parameters when the updater is 'frozen'.")


@hookimpl
def rd_register_teacher_updaters(registry):
    registry.register(Frozen, name="frozen")
