"""What a config asks of this machine, checked before the agent starts (``preflight``) and by
``edge-agent check-config`` (``check_config_file``): folders that must be writable, a source URI
that names a known kind, trusted keys that load, labels the model has, a runtime that is
installed (and for OpenVINO, check-config only: a device it finds), a web page beyond loopback
with its token.

Validation (``agent.config``) does no I/O; these checks do, and each problem is one line
``FILE:LINE: key: problem``. What fails here is something a restart cannot fix, so ``run`` exits
78 (``ConfigError``) with the lines instead of a traceback in a restart loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from agent.config import (
    Config,
    check_files,
    did_you_mean,
    env_variable,
    parse_config,
    relative_to,
    web_token,
    where,
)
from agent.errors import ConfigError, EdgeAgentError

# A problem: the key it is about (a path into the config) and what is wrong.
Problem = tuple[tuple[int | str, ...], str]


def folder_problem(path: Path) -> str | None:
    """Why files cannot be created in the folder ``path`` (made when missing), or None.

    Probes with a temporary folder it removes again: nothing is left behind, ``path`` is not made.
    """
    probe = path
    try:
        while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            if probe == path:
                return "it is a file, not a folder"
            return f"a file is in the way: {str(probe)!r}"
        Path(tempfile.mkdtemp(prefix=".edge-agent-probe-", dir=probe)).rmdir()
    except OSError as exc:
        return f"cannot create files in {str(probe)!r}: {exc.strerror or exc}"
    return None


def store_problems(config: Config) -> list[Problem]:
    """The state folder (outbox, overlay, models) and a separately placed outbox file."""
    problems: list[Problem] = []
    store = config.store.path
    reason = folder_problem(store)
    if reason:
        problems.append((("store", "path"), f"folder {str(store)!r} cannot be written: {reason}"))
    outbox = config.mqtt.outbox.path
    if outbox is not None:
        reason = "it is a folder, not a file" if outbox.is_dir() else folder_problem(outbox.parent)
        if reason:
            problems.append(
                (("mqtt", "outbox", "path"), f"file {str(outbox)!r} cannot be written: {reason}")
            )
    return problems


def source_problems(config: Config, *, files: bool = True) -> list[Problem]:
    """A URI scheme no source reads (``rtps://``), and (``files``) a video file that is not there,
    for every camera (the key named is the camera's).

    A camera that is not plugged in is not a problem, and neither is a missing file for ``run``:
    both are retried while the agent runs (a file may be copied in later).
    """
    if config.single_camera:
        return _uri_problems(config.source.uri, ("source", "uri"), files)
    return [
        problem
        for name, camera in config.cameras.items()
        for problem in _uri_problems(camera.source.uri, ("cameras", name, "source", "uri"), files)
    ]


def _uri_problems(uri: str, loc: tuple[str, ...], files: bool) -> list[Problem]:
    from agent.sources import STREAM_SCHEMES, source_kind

    uri = uri.strip()
    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        known = [s.removesuffix("://") for s in STREAM_SCHEMES]
        if scheme not in known:
            # Only the scheme is shown: the rest of a URL can hold a password.
            return [
                (
                    loc,
                    f"unknown scheme {scheme + '://'!r}; known: "
                    + ", ".join(s + "://" for s in known)
                    + did_you_mean(scheme, known),
                )
            ]
        return []
    if files and source_kind(uri) == "file" and not Path(uri).expanduser().exists():
        return [(loc, f"video file or image folder {uri!r} does not exist")]
    return []


def key_problems(config: Config) -> list[Problem]:
    """Every ``registry.trusted_keys`` file exists and is an Ed25519 public key."""
    if config.registry is None:
        return []
    from agent.registry.signing import load_public_keys

    problems: list[Problem] = []
    for i, key in enumerate(config.registry.trusted_keys):
        loc = ("registry", "trusted_keys", i)
        if not key.is_file():
            problems.append((loc, f"key file {str(key)!r} does not exist"))
            continue
        try:
            load_public_keys([key])
        except EdgeAgentError as exc:
            problems.append((loc, str(exc)))
    return problems


def runtime_problems(config: Config, *, devices: bool = True) -> list[Problem]:
    """``model.runtime: openvino`` where the openvino package is missing, and (``devices``) a
    ``model.device`` OpenVINO does not find on this machine (AUTO always is)."""
    if config.model.runtime != "openvino":
        return []
    import importlib.util

    try:
        missing = importlib.util.find_spec("openvino") is None
    except ValueError:  # in sys.modules as None: blocked
        missing = True
    if missing:
        return [
            (
                ("model", "runtime"),
                "openvino is not installed here: pip install 'edge-detection-agent[openvino]', "
                "or use runtime auto, onnx or tflite",
            )
        ]
    device = config.model.device
    if not devices or device == "AUTO":
        return []
    from agent.runtimes.openvino import device_found, one_line, openvino_module

    try:
        available = list(openvino_module().Core().available_devices)
    except RuntimeError as exc:
        return [(("model", "device"), f"OpenVINO cannot list its devices: {one_line(exc)}")]
    if device_found(device, available):
        return []
    return [
        (
            ("model", "device"),
            f"OpenVINO finds no {device} here (available: {', '.join(available) or 'none'})",
        )
    ]


def model_labels(config: Config) -> tuple[str, list[str]]:
    """The configured model's name and labels, from its card (or, without one, from the model's
    metadata: the file is opened, nothing is run)."""
    from agent.detection.card import card_path_for, infer_card, load_card

    path = config.model.path
    card_path = config.model.card or card_path_for(path)
    if config.model.card is not None or card_path.is_file():
        card = load_card(card_path)
    else:
        from agent.runtimes import load_runtime

        card = infer_card(path, load_runtime(path, runtime=config.model.runtime))
    return card.name, list(card.labels)


def label_problems(config: Config) -> list[Problem]:
    """``detection.labels`` and ``homeassistant.labels`` the model cannot report."""
    if not config.model.path.is_file() or (
        config.model.card is not None and not config.model.card.is_file()
    ):
        return []  # check_files reports the missing file
    wanted: list[tuple[tuple[int | str, ...], str]] = [
        (("detection", "labels", i), label) for i, label in enumerate(config.detection.labels)
    ]
    if config.homeassistant is not None:
        wanted += [
            (("homeassistant", "labels", i), label)
            for i, label in enumerate(config.homeassistant.labels)
        ]
    if not wanted:
        return []
    try:
        name, labels = model_labels(config)
    except EdgeAgentError as exc:
        return [(("model", "card" if config.model.card else "path"), str(exc))]
    return [
        (
            loc,
            f"{label!r} is not a label of the model {name} (its labels: {', '.join(labels)})"
            + did_you_mean(label, labels),
        )
        for loc, label in wanted
        if label not in labels
    ]


def web_problems(config: Config, environ: dict[str, str] | None = None) -> list[Problem]:
    """A token file that cannot be read (or is too short), and ``web.listen`` beyond loopback
    without a token: anyone on the network would see the cameras."""
    if config.web is None:
        return []
    try:
        token = web_token(config.web, environ)
    except ConfigError as exc:
        return [(("web", "token_file"), str(exc))]
    if token is None and not config.web.loopback:
        return [
            (
                ("web", "listen"),
                f"{config.web.listen} is reachable beyond this machine and no token is set: "
                "put one in a file named by web.token_file (or systemd's credential web-token), "
                "or listen on 127.0.0.1",
            )
        ]
    return []


def format_problems(problems: list[Problem], source: str, text: str = "") -> list[str]:
    """``FILE:LINE: key: problem`` lines (``environment VAR: key: problem`` for a key an
    environment variable set)."""
    root = _compose(text)
    lines = []
    for loc, msg in problems:
        var = env_variable(loc)
        place = f"environment {var}" if var else where(source, root, loc)
        lines.append(f"{place}: {'.'.join(str(p) for p in loc)}: {msg}")
    return lines


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text) if text else None
    except yaml.YAMLError:
        return None


def preflight(config: Config, config_path: str | Path | None = None) -> None:
    """Refuse to start (``ConfigError``: exit 78) on what a restart cannot fix: a state folder
    that cannot be written, an unknown source scheme, a trusted key that does not load, the
    openvino runtime without its package."""
    problems = runtime_problems(config, devices=False) + key_problems(config)
    problems += web_problems(config)
    if config.split.role != "tail":  # a tail has no camera and keeps no state
        problems = store_problems(config) + source_problems(config, files=False) + problems
    if not problems:
        return
    source, text = "<defaults>", ""
    if config_path is not None:
        source = str(config_path)
        try:
            text = Path(config_path).read_text(encoding="utf-8")
        except OSError:
            text = ""
    raise ConfigError("\n".join(format_problems(problems, source, text)))


def check_config_file(path: Path) -> list[str]:
    """Every problem ``check-config`` finds in the config at ``path``, one line each (none: ok).

    Environment overrides apply, as they would for ``run``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"]
    try:
        config = relative_to(parse_config(text, str(path)), path.resolve().parent)
    except ConfigError as exc:
        return str(exc).splitlines()
    problems = check_files(config, str(path), text)
    found = runtime_problems(config) + key_problems(config) + label_problems(config)
    found += web_problems(config)
    if config.split.role != "tail":
        found = store_problems(config) + source_problems(config) + found
    return problems + format_problems(found, str(path), text)
