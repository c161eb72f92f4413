"""The package's small exception hierarchy: every user-facing failure is one of these."""


class MezoError(Exception):
    """Base class: a failure with a message meant for the user (what is wrong, what is allowed)."""


class ConfigError(MezoError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class LaunchEnvError(MezoError, ValueError):
    """The launcher's environment (RANK, WORLD_SIZE, SLURM_*, CUDA devices) is inconsistent."""


class PortError(MezoError, RuntimeError):
    """No port could be agreed on; the message names the ports tried and who holds them."""


class DataError(MezoError, ValueError):
    """A dataset file is malformed; the message names file:line and the field."""


class BackendError(MezoError, RuntimeError):
    """A forward backend cannot be built (missing package, unsupported version, bad model)."""


class CheckpointError(MezoError, RuntimeError):
    """A checkpoint or step log cannot be read or written."""


class RewardError(MezoError, RuntimeError):
    """A reward function raised or returned a non-finite number or a non-number; names it and file:line."""
