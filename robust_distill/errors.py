"""Every error robust-distill raises for people, by kind, each kind with the command line's exit code.

An error meant for a user derives from :class:`RDError` through one of the kinds below; the command line
(:func:`robust_distill.cli.main`) prints its message, never a traceback, and exits with the kind's
``exit_code``. Each kind also keeps the built-in base that callers caught before it existed (``ValueError``,
``OSError``, ...), so ``except ValueError`` still sees a bad configuration.

=====================  ====  ==========================================================================
kind                   exit  raised when
=====================  ====  ==========================================================================
:class:`ConfigError`   2     the configuration or command line cannot work (checked before any work)
:class:`InputError`    3     a file or folder given as input cannot be used (corrupt, of another kind)
:class:`CheckpointError` 3   a checkpoint is missing, unreadable, unsafe to load or not ours
:class:`PluginError`   3     a plugin failed to load, raised in a hook, returned nonsense, or a name is
                             unknown or registered twice
:class:`DiskError`     3     a file could not be written (disk full, read-only), or another process holds
                             the output folder
:class:`SetupError`    3     an optional library that a part needs is not installed
:class:`RunError`      4     the run cannot go on (it diverged, the platform cannot compile, an attack broke
                             its contract); nothing non-finite was saved
=====================  ====  ==========================================================================

Errors with a message built from several fields live beside the code that knows those fields (the plugin
manager's ``PluginLoadError``, the registry's ``UnknownNameError``, the configuration's
``ResumeMismatchError``); all of them derive from a kind defined here. This module imports nothing of the
project: every layer may raise these.
"""

from __future__ import annotations

__all__ = [
    "RDError", "ConfigError", "InputError", "CheckpointError", "PluginError", "DiskError", "SetupError", "RunError",
    "CorruptFileError", "UnreadableImageError", "HubError", "SelectionError", "UnsafeCheckpointError",
    "MissingDependencyError", "OuterLossError", "AttackContractError", "RegistryError",
    "WriteError", "DiskFullError", "DivergenceError", "CompileUnavailableError",
]


class RDError(Exception):
    """Base of every error robust-distill raises for people; ``exit_code`` is the command line's."""

    exit_code = 1
    #: what the command line prints before the message ("robust-distill: error: ...")
    label = "error: "


# --- the kinds -------------------------------------------------------------------------------------


class ConfigError(RDError, ValueError):
    """The configuration cannot work; the message lists every problem found."""

    exit_code = 2
    label = ""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid {source} ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{lines}")


class InputError(RDError, ValueError):
    """An input file or folder cannot be used as given (incomplete, of another kind): the message names it."""

    exit_code = 3


class CheckpointError(RDError, ValueError):
    """A checkpoint file is missing, unreadable or not a robust-distill checkpoint."""

    exit_code = 3


class PluginError(RDError):
    """A plugin could not be loaded, failed in a hook, returned something unusable, or was selected by a name
    that does not exist."""

    exit_code = 3


class DiskError(RDError, OSError):
    """A file could not be written, or a folder cannot be used because another process holds it."""

    exit_code = 3


class SetupError(RDError):
    """This installation cannot do what was asked: an optional library is missing."""

    exit_code = 3


class RunError(RDError):
    """The run cannot go on; nothing non-finite was saved."""

    exit_code = 4


# --- input ---------------------------------------------------------------------------------------------


class CorruptFileError(InputError):
    """A file the project wrote (JSON, YAML) cannot be parsed: the message names it and says what to do."""


class UnreadableImageError(InputError, OSError):
    """An image file could not be decoded (the message names the file)."""


class HubError(InputError):
    """A run, checkpoint or Hub folder that cannot be exported or loaded; the message says why."""


class SelectionError(InputError, RuntimeError):
    """Teacher selection cannot go on (an identification run failed, no dataset known...)."""


# --- checkpoints -----------------------------------------------------------------------------------------


class UnsafeCheckpointError(CheckpointError):
    """A file would need arbitrary unpickling (code execution) to load, and the user did not opt in."""


# --- plugins -------------------------------------------------------------------------------------------


class RegistryError(PluginError):
    """A name that no plugin registered, or one registered twice (see :mod:`robust_distill.core.registry`)."""


class MissingDependencyError(SetupError, ImportError):
    """An optional library needed by a plugin is not installed."""


class OuterLossError(PluginError):
    """An outer loss returned something other than a floating-point scalar tensor with grad."""




# --- disk ----------------------------------------------------------------------------------------------


class WriteError(DiskError):
    """Writing a file failed; the message names it (``filename``) and says that its previous version is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(WriteError):
    """No space left (or the quota is exhausted) while writing a file; the previous version is intact."""


# --- runs ----------------------------------------------------------------------------------------------


class DivergenceError(RunError, FloatingPointError):
    """Training produced a non-finite loss or non-finite weights; the run stopped before saving them."""


class AttackContractError(RunError, RuntimeError):
    """An evaluation attack returned inputs outside its epsilon ball or outside [0, 1]: its results cannot count."""


class CompileUnavailableError(RunError, RuntimeError):
    """``torch.compile`` cannot work on this platform."""
