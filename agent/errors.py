"""The exceptions edge-agent raises, so callers catch ours and never a library's.

    EdgeAgentError                     (exit code 1 unless the class says 78)
    ├── ConfigError                78  the config (file, environment or change) is invalid, or a
    │                                  file or folder it names cannot be used (store path, keys)
    ├── ModelError                 78
    │   ├── ModelLoadError             a model file cannot be read or run by its runtime
    │   ├── ModelCardError             a model card is missing fields or contradicts the model
    │   └── DecodeError                model outputs do not fit the family's decoder
    ├── RuntimeUnavailableError    78  the runtime a model needs is not installed
    ├── SourceError                    a camera, stream, file or folder cannot be opened or read
    ├── UnknownCameraError             a command names a camera the agent does not have
    ├── PublishError               78  the MQTT connection cannot be set up (TLS files, login)
    ├── RegistryError                  a model update cannot be used (the running model serves on)
    │   ├── SignatureError             no trusted key signed these exact bytes
    │   ├── ManifestError              a manifest or index is malformed, expired, unsafe or not ours
    │   ├── DownloadError              the artifact cannot be fetched, or is larger than announced
    │   │   ├── ResumableDownloadError cut short (timeout, 5xx, reset): the partial file stays
    │   │   └── MissingFileError       the registry has no such file (HTTP 404, no path)
    │   └── ChecksumError              the artifact's sha256 differs from the manifest's
    ├── CompressError                  a quantize/prune/distill/eval run cannot be done as asked
    └── SplitError                     a model cannot be cut where asked, or split parts do not fit

Third-party errors are translated where they enter (``raise ModelLoadError(...) from exc``).

Each class carries the process exit code it means when it ends a command (DESIGN.md section 9;
``agent.cli.main`` maps it): ``EXIT_CONFIG`` (78, EX_CONFIG) for what a restart cannot fix (an
invalid config, a model that cannot load, missing TLS files, refused credentials), so that
systemd's ``RestartPreventExitStatus=78`` stops instead of restarting in a loop, and
``EXIT_FAILURE`` (1) for the rest. An exception that is not an ``EdgeAgentError`` is a bug: 1,
with its traceback.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILURE = 1  # the command could not do what was asked, or an unexpected error (a bug)
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): a restart cannot fix it, a person must


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class ConfigError(EdgeAgentError):
    """The configuration is invalid, or names a file or folder that cannot be used; the message
    names the file, line and key (or the environment variable)."""

    exit_code = EXIT_CONFIG


class ModelError(EdgeAgentError):
    """A model cannot be used."""

    exit_code = EXIT_CONFIG


class ModelLoadError(ModelError):
    """A model file cannot be read or run."""


class ModelCardError(ModelError):
    """A model card is incomplete or does not match its model."""


class DecodeError(ModelError):
    """Model outputs do not have the shapes its family expects."""


class RuntimeUnavailableError(EdgeAgentError):
    """The runtime for a model format is not installed on this device."""

    exit_code = EXIT_CONFIG


class SourceError(EdgeAgentError):
    """A frame source cannot be opened or read."""


class PublishError(EdgeAgentError):
    """The MQTT side cannot be set up (bad TLS files, bad credentials...)."""

    exit_code = EXIT_CONFIG


class RegistryError(EdgeAgentError):
    """A model update is refused; the message says why."""


class SignatureError(RegistryError):
    """No trusted key signed these exact bytes."""


class ManifestError(RegistryError):
    """A manifest or index is malformed, expired, unsafe or not meant for this agent."""


class DownloadError(RegistryError):
    """An artifact cannot be fetched, or is larger than its manifest says."""


class ResumableDownloadError(DownloadError):
    """A download cut short by the network or the server (timeout, HTTP 5xx, connection reset,
    truncated body): the partial file is kept and the next try resumes it."""


class MissingFileError(DownloadError):
    """The registry has no such file (HTTP 404 or 410, or no such path under file://)."""


class ChecksumError(RegistryError):
    """An artifact's sha256 does not match its manifest."""


class CompressError(EdgeAgentError):
    """A model-toolchain run (quantize, prune, distill, eval) cannot be done as asked."""


class SplitError(EdgeAgentError):
    """A model cannot be cut at the asked point, or head and tail do not fit together."""


class UnknownCameraError(EdgeAgentError):
    """A command named a camera the agent does not have (or none, where there are several);
    the message lists the cameras."""

    def __init__(self, name: str | None, names: list[str]) -> None:
        self.names = names
        listed = ", ".join(names)
        super().__init__(
            f"no camera {name!r}; cameras: {listed}"
            if name is not None
            else f'give "camera": one of {listed}'
        )
