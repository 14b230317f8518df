"""The registry client over real HTTP on loopback and file:// (resume, size and checksum checks,
timeouts, unsafe paths) and the on-device model store with real symlinks."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.damaged import damaged_files
from agent.errors import (
    ChecksumError,
    DownloadError,
    ManifestError,
    MissingFileError,
    RegistryError,
    ResumableDownloadError,
)
from agent.registry.client import RegistryClient
from agent.registry.store import Active, ModelStore
from tests.registry_server import RegistryServer

ARTIFACT = "face/2.0.0/face model.tflite"  # a space, to prove segments are quoted
BLOB = os.urandom(300_000)
SHA = hashlib.sha256(BLOB).hexdigest()
SIZE = len(BLOB)


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Outside tmp_path, so a test can assert that a failed download left nothing in tmp_path.
    root = tmp_path_factory.mktemp("registry")
    (root / "face/2.0.0").mkdir(parents=True)
    (root / "index.json").write_text(
        json.dumps({"models": {"face": {"channels": {"stable": "2.0.0"}}}})
    )
    (root / ARTIFACT).write_bytes(BLOB)
    (root / "big.json").write_bytes(b"x" * 5000)
    return root


@pytest.fixture
def server(registry: Path) -> Iterator[RegistryServer]:
    with RegistryServer(registry) as s:
        yield s


@pytest.fixture
def client(server: RegistryServer) -> RegistryClient:
    return RegistryClient(server.url, timeout_s=5)


def artifact_requests(server: RegistryServer) -> list[tuple[str, str | None]]:
    return [r for r in server.requests if r[0].startswith("/face/2.0.0/")]


# --- URLs and small files ---


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://host/reg", "http://host/reg/"),
        ("https://host:8443/a/b/", "https://host:8443/a/b/"),
        ("HTTP://host", "http://host/"),
        ("file:///srv/reg", "file:///srv/reg/"),
    ],
)
def test_registry_url_gets_a_trailing_slash(url: str, normalised: str) -> None:
    assert RegistryClient(url).url == normalised


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/reg/",
        "/srv/reg",
        "reg",
        "http:///reg",
        "http://host/reg?x=1",
        "file://other/reg",
    ],
)
def test_unsupported_registry_urls_are_refused(url: str) -> None:
    with pytest.raises(RegistryError):
        RegistryClient(url)


def test_fetch_reads_small_files_over_http(client: RegistryClient, registry: Path) -> None:
    assert client.fetch("index.json") == (registry / "index.json").read_bytes()


def test_fetch_reads_small_files_from_a_folder(registry: Path) -> None:
    client = RegistryClient(registry.as_uri())
    assert client.fetch("index.json") == (registry / "index.json").read_bytes()


def test_fetch_of_a_missing_file_names_the_url(
    client: RegistryClient, server: RegistryServer
) -> None:
    with pytest.raises(
        DownloadError, match=r"http://127\.0\.0\.1:\d+/nope/manifest\.json: HTTP 404"
    ):
        client.fetch("nope/manifest.json")


def test_fetch_of_a_missing_local_file_names_the_url(registry: Path) -> None:
    with pytest.raises(DownloadError, match=r"file://.*/nope\.json"):
        RegistryClient(registry.as_uri()).fetch("nope.json")


def test_fetch_refuses_files_over_the_limit(client: RegistryClient, registry: Path) -> None:
    with pytest.raises(DownloadError, match="more than 1000"):
        client.fetch("big.json", max_bytes=1000)
    with pytest.raises(DownloadError, match="more than 1000"):
        RegistryClient(registry.as_uri()).fetch("big.json", max_bytes=1000)


def test_fetch_refuses_files_over_the_limit_without_a_length(
    client: RegistryClient, server: RegistryServer
) -> None:
    server.omit_length = True
    with pytest.raises(DownloadError, match="more than 1000"):
        client.fetch("big.json", max_bytes=1000)


def test_fetch_times_out(server: RegistryServer) -> None:
    server.delay_s = 3
    with pytest.raises(DownloadError, match="timed out"):
        RegistryClient(server.url, timeout_s=0.3).fetch("index.json")


@pytest.mark.parametrize("rel", ["../secret", "face/../../x", "/etc/passwd", "a//b", "a/./b", ""])
def test_unsafe_relative_paths_are_refused(
    client: RegistryClient, rel: str, tmp_path: Path
) -> None:
    with pytest.raises(ManifestError):
        client.fetch(rel)
    with pytest.raises(ManifestError):
        client.download(rel, tmp_path / "x", size=1, sha256=SHA)


def test_redirects_stay_on_the_registry_host(
    client: RegistryClient, server: RegistryServer
) -> None:
    server.redirects["/moved.json"] = server.url + "index.json"
    assert client.fetch("moved.json").startswith(b"{")
    server.redirects["/away.json"] = f"http://localhost:{server.port}/index.json"
    with pytest.raises(DownloadError, match="refused"):
        client.fetch("away.json")


# --- downloads ---


def test_download_writes_the_file_after_checking_its_sha256(
    client: RegistryClient, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    dest = client.download(
        ARTIFACT,
        tmp_path / "out/model.tflite",
        size=SIZE,
        sha256=SHA,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert dest == tmp_path / "out/model.tflite"
    assert dest.read_bytes() == BLOB
    assert not (tmp_path / "out/model.tflite.part").exists()
    assert seen[-1] == (SIZE, SIZE)
    assert all(t == SIZE for _, t in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})
    assert len(seen) <= 102  # every 1% at most, plus the start and the end


def test_download_from_a_folder(registry: Path, tmp_path: Path) -> None:
    client = RegistryClient(registry.as_uri())
    assert (
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA).read_bytes() == BLOB
    )


def test_download_from_a_folder_resumes_a_partial_file(registry: Path, tmp_path: Path) -> None:
    (tmp_path / "m.tflite.part").write_bytes(BLOB[:1234])
    client = RegistryClient(registry.as_uri())
    assert (
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA).read_bytes() == BLOB
    )


def test_truncated_download_keeps_the_part_and_the_next_try_resumes_it(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    dest = tmp_path / "m.tflite"
    server.truncate_after = 100_000
    with pytest.raises(DownloadError, match="truncated"):
        client.download(ARTIFACT, dest, size=SIZE, sha256=SHA)
    part = tmp_path / "m.tflite.part"
    assert part.stat().st_size == 100_000
    assert not dest.exists()

    client.download(ARTIFACT, dest, size=SIZE, sha256=SHA)
    assert dest.read_bytes() == BLOB
    assert not part.exists()
    assert [r for _, r in artifact_requests(server)] == [None, "bytes=100000-"]


def test_download_cut_without_a_content_length_is_truncated(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    server.omit_length = True
    server.truncate_after = 70_000
    with pytest.raises(DownloadError, match="truncated at 70000 of 300000"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA)
    assert (
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA).read_bytes() == BLOB
    )


def test_chunked_download_cut_is_truncated_and_resumed(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    server.chunked = True
    server.truncate_after = 150_000
    with pytest.raises(DownloadError, match="truncated"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA)
    kept = (tmp_path / "m.tflite.part").stat().st_size
    assert 0 < kept <= 150_000
    assert (
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA).read_bytes() == BLOB
    )
    assert [r for _, r in artifact_requests(server)] == [None, f"bytes={kept}-"]


def test_chunked_body_larger_than_the_manifest_says_is_refused(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    server.chunked = True
    server.extra_bytes = 1
    with pytest.raises(DownloadError, match="larger than the manifest says"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_server_ignoring_range_restarts_from_zero(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "m.tflite.part").write_bytes(BLOB[:50_000])
    server.ignore_range = True
    assert (
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA).read_bytes() == BLOB
    )
    assert [r for _, r in artifact_requests(server)] == ["bytes=50000-"]


def test_complete_part_file_goes_straight_to_the_checksum(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "m.tflite.part").write_bytes(BLOB)
    assert (
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA).read_bytes() == BLOB
    )
    assert [r for _, r in artifact_requests(server)] == [f"bytes={SIZE}-"]  # answered 416


def test_part_file_longer_than_the_remote_file_is_dropped(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "m.tflite.part").write_bytes(BLOB[:1000])
    with pytest.raises(DownloadError, match="smaller than the manifest says"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE + 10, sha256=SHA)
    assert not (tmp_path / "m.tflite.part").exists()


@pytest.mark.parametrize("omit_length", [False, True])
def test_body_larger_than_the_manifest_says_is_refused(
    client: RegistryClient, server: RegistryServer, tmp_path: Path, omit_length: bool
) -> None:
    server.extra_bytes = 10
    server.omit_length = omit_length
    with pytest.raises(DownloadError, match="larger than the manifest says"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_resumed_body_larger_than_the_manifest_says_is_refused(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "m.tflite.part").write_bytes(BLOB[:1000])
    server.extra_bytes = 10
    with pytest.raises(DownloadError, match="larger than the manifest says"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_local_file_larger_than_the_manifest_says_is_refused(
    registry: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="larger than the manifest says"):
        RegistryClient(registry.as_uri()).download(
            ARTIFACT, out / "m.tflite", size=SIZE - 1, sha256=SHA
        )
    assert list(out.iterdir()) == []


def test_sha256_mismatch_deletes_the_part(client: RegistryClient, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="sha256"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_times_out(server: RegistryServer, tmp_path: Path) -> None:
    server.delay_s = 3
    client = RegistryClient(server.url, timeout_s=0.3)
    with pytest.raises(DownloadError, match="timed out"):
        client.download(ARTIFACT, tmp_path / "m.tflite", size=SIZE, sha256=SHA)
    assert not (tmp_path / "m.tflite").exists()


def test_missing_artifact_names_the_url(client: RegistryClient, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"/face/2\.0\.0/nope\.tflite: HTTP 404"):
        client.download("face/2.0.0/nope.tflite", tmp_path / "m.tflite", size=SIZE, sha256=SHA)


# --- what kind of failure: resumable or not, by type ---

ARTIFACT_PATH = "/face/2.0.0/face%20model.tflite"


def cut_then(server: RegistryServer, client: RegistryClient, dest: Path) -> Path:
    """A first try cut at 100 kB, leaving a .part."""
    server.truncate_after = 100_000
    with pytest.raises(ResumableDownloadError, match="truncated"):
        client.download(ARTIFACT, dest, size=SIZE, sha256=SHA)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == 100_000
    return part


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_a_server_error_is_resumable_and_keeps_the_part(
    client: RegistryClient, server: RegistryServer, tmp_path: Path, status: int
) -> None:
    dest = tmp_path / "m.tflite"
    part = cut_then(server, client, dest)
    server.fail[ARTIFACT_PATH] = [status]
    with pytest.raises(ResumableDownloadError, match=f"HTTP {status}"):
        client.download(ARTIFACT, dest, size=SIZE, sha256=SHA)
    assert part.stat().st_size == 100_000
    client.download(ARTIFACT, dest, size=SIZE, sha256=SHA)
    assert dest.read_bytes() == BLOB
    assert [r for _, r in artifact_requests(server)][-1] == "bytes=100000-"


def test_a_timeout_is_resumable_and_keeps_the_part(
    server: RegistryServer, tmp_path: Path
) -> None:
    dest = tmp_path / "m.tflite"
    part = cut_then(server, RegistryClient(server.url, timeout_s=5), dest)
    server.delay_s = 3
    with pytest.raises(ResumableDownloadError, match="timed out"):
        RegistryClient(server.url, timeout_s=0.3).download(ARTIFACT, dest, size=SIZE, sha256=SHA)
    assert part.stat().st_size == 100_000


def test_a_missing_file_is_its_own_error(client: RegistryClient, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="HTTP 404"):
        client.fetch("face/9.9.9/manifest.json")
    with pytest.raises(MissingFileError):
        client.download("face/2.0.0/nope.tflite", tmp_path / "m.tflite", size=SIZE, sha256=SHA)


def test_a_missing_local_file_is_its_own_error(registry: Path, tmp_path: Path) -> None:
    client = RegistryClient(registry.as_uri())
    with pytest.raises(MissingFileError, match="no such file"):
        client.fetch("face/9.9.9/manifest.json")


def test_a_refusal_is_not_resumable(
    client: RegistryClient, server: RegistryServer, tmp_path: Path
) -> None:
    server.fail["/index.json"] = [403]
    with pytest.raises(DownloadError, match="HTTP 403") as caught:
        client.fetch("index.json")
    assert not isinstance(caught.value, ResumableDownloadError)


# --- the model store ---


def install(store: ModelStore, version: str, name: str = "face", data: bytes = b"model") -> Path:
    staging = store.staging_dir(name, version)
    (staging / "model.tflite").write_bytes(data + version.encode())
    (staging / "card.yaml").write_text(f"version: {version}\n")
    return store.install(name, version)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state")


def test_install_moves_the_staged_folder_into_the_store(store: ModelStore, tmp_path: Path) -> None:
    folder = install(store, "1.0.0")
    assert folder == tmp_path / "state/models/face/1.0.0"
    assert store.model_file("face", "1.0.0") == folder / "model.tflite"
    assert not (tmp_path / "state/staging/face/1.0.0").exists()
    assert store.versions("face") == ["1.0.0"]


def test_install_never_replaces_an_installed_version(store: ModelStore) -> None:
    install(store, "1.0.0")
    install(store, "1.0.0")  # the same files again: the staged copy is dropped
    assert not store.staging_dir("face", "1.0.0").joinpath("model.tflite").exists()
    with pytest.raises(RegistryError, match="installed already"):
        install(store, "1.0.0", data=b"other")
    assert store.model_file("face", "1.0.0").read_bytes() == b"model1.0.0"


def test_install_without_a_staged_folder_is_refused(store: ModelStore) -> None:
    with pytest.raises(RegistryError, match="nothing staged"):
        store.install("face", "9.9.9")


def test_current_and_previous_are_relative_symlinks(store: ModelStore, tmp_path: Path) -> None:
    assert store.current("face") is None
    install(store, "1.0.0")
    install(store, "2.0.0")
    store.set_current("face", "1.0.0")
    assert (store.current("face"), store.previous("face")) == ("1.0.0", None)
    store.set_current("face", "2.0.0")
    assert (store.current("face"), store.previous("face")) == ("2.0.0", "1.0.0")
    link = store.link_path("face")
    assert link == tmp_path / "state/models/face/current"
    assert link.is_symlink() and str(link.readlink()) == "2.0.0"
    assert str(store.link_path("face", "previous").readlink()) == "1.0.0"
    assert (link / "model.tflite").read_bytes() == b"model2.0.0"
    store.set_current("face", "2.0.0")  # already current: previous stays
    assert store.previous("face") == "1.0.0"


def test_switching_leaves_no_temporary_link(store: ModelStore) -> None:
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        install(store, v)
        store.set_current("face", v)
    store.rollback("face")
    names = sorted(p.name for p in store.model_dir("face").iterdir())
    assert names == ["1.0.0", "2.0.0", "3.0.0", "current", "previous"]


def test_rollback_swaps_current_and_previous(store: ModelStore) -> None:
    install(store, "1.0.0")
    install(store, "2.0.0")
    store.set_current("face", "1.0.0")
    with pytest.raises(RegistryError, match="no previous"):
        store.rollback("face")
    store.set_current("face", "2.0.0")
    assert store.rollback("face") == "1.0.0"
    assert (store.current("face"), store.previous("face")) == ("1.0.0", "2.0.0")


def test_set_previous_points_or_clears(store: ModelStore) -> None:
    install(store, "1.0.0")
    store.set_previous("face", "1.0.0")
    assert store.previous("face") == "1.0.0"
    store.set_previous("face", None)
    assert store.previous("face") is None
    with pytest.raises(RegistryError, match="not in the store"):
        store.set_previous("face", "5.0.0")
    with pytest.raises(RegistryError, match="not in the store"):
        store.set_current("face", "5.0.0")


def test_highest_accepted_keeps_the_maximum(store: ModelStore, tmp_path: Path) -> None:
    assert store.highest_accepted("face") is None
    store.record_accepted("face", "1.9")
    store.record_accepted("face", "1.10")
    store.record_accepted("face", "1.2")
    assert store.highest_accepted("face") == "1.10"
    folder = tmp_path / "state/models/face"
    assert json.loads((folder / "accepted.json").read_text()) == {"version": "1.10"}
    assert sorted(p.name for p in folder.iterdir()) == ["accepted.json"]
    with pytest.raises(ManifestError):
        store.record_accepted("face", "not-a-version")


def test_versions_sort_by_version_not_text(store: ModelStore) -> None:
    for v in ("1.10.0", "1.9.0", "1.2.0"):
        install(store, v)
    store.set_current("face", "1.10.0")
    assert store.versions("face") == ["1.2.0", "1.9.0", "1.10.0"]


def test_remove_refuses_current_and_previous(store: ModelStore) -> None:
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        install(store, v)
    store.set_current("face", "2.0.0")
    store.set_current("face", "3.0.0")
    for v in ("2.0.0", "3.0.0"):
        with pytest.raises(RegistryError, match="current or previous"):
            store.remove("face", v)
    store.remove("face", "1.0.0")
    store.remove("face", "1.0.0")  # gone already: nothing to do
    assert store.versions("face") == ["2.0.0", "3.0.0"]
    assert sorted(p.name for p in store.model_dir("face").iterdir()) == [
        "2.0.0",
        "3.0.0",
        "current",
        "previous",
    ]


def test_clean_staging(store: ModelStore) -> None:
    store.staging_dir("face", "1.0.0")
    store.staging_dir("person", "1.0.0")
    store.clean_staging("face")
    assert sorted(p.name for p in store.staging.iterdir()) == ["person"]
    store.clean_staging(None)
    assert not store.staging.exists()


def test_model_file_needs_exactly_one_model(store: ModelStore) -> None:
    folder = install(store, "1.0.0")
    (folder / "second.onnx").write_bytes(b"x")
    with pytest.raises(RegistryError, match="found 2"):
        store.model_file("face", "1.0.0")
    with pytest.raises(RegistryError, match="not in the store"):
        store.model_file("face", "7.0.0")


@pytest.mark.parametrize(
    "bad", ["..", "../x", "a/b", "/etc", ".hidden", "", "a..b", "x" * 65, "current", "previous"]
)
def test_unsafe_names_and_versions_are_refused(store: ModelStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ManifestError):
        store.staging_dir("face", bad)
    with pytest.raises(ManifestError):
        store.version_dir("face", bad)
    with pytest.raises(ManifestError):
        store.set_current("face", bad)
    if bad not in ("current", "previous"):  # fine as a model name, only reserved as a version
        with pytest.raises(ManifestError):
            store.staging_dir(bad, "1.0.0")
        with pytest.raises(ManifestError):
            store.current(bad)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*x*"))


def test_a_link_to_something_else_is_reported(store: ModelStore) -> None:
    install(store, "1.0.0")
    link = store.link_path("face")
    link.symlink_to("../../../etc")
    assert store.current("face") is None  # set aside, reported, as if never set
    assert not link.is_symlink()
    moved = [d for d in damaged_files() if d["file"] == str(link)]
    assert moved and "not a version folder" in moved[0]["reason"]
    assert Path(moved[0]["moved_to"]).is_symlink()


def test_a_damaged_current_link_or_record_is_set_aside(store: ModelStore) -> None:
    install(store, "1.0.0")
    store.set_current("face", "1.0.0")
    store.record_accepted("face", "1.0.0")
    link = store.link_path("face")
    link.unlink()
    link.write_bytes(b"\x00garbage")  # a power cut left a plain file where the link was
    accepted = store.model_dir("face") / "accepted.json"
    accepted.write_bytes(b"{\x00")
    assert store.current("face") is None
    assert store.highest_accepted("face") is None
    files = {d["file"] for d in damaged_files()}
    assert {str(link), str(accepted)} <= files
    assert not accepted.exists() and not link.exists()


def test_set_links_is_exact_and_idempotent(store: ModelStore) -> None:
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        install(store, v)
    store.set_links("face", "2.0.0", "1.0.0")
    store.set_links("face", "2.0.0", "1.0.0")
    assert store.links("face") == ("2.0.0", "1.0.0")
    store.set_links("face", "3.0.0", None)
    assert store.links("face") == ("3.0.0", None)
    with pytest.raises(RegistryError, match="not in the store"):
        store.set_links("face", "9.0.0", None)
    assert store.links("face") == ("3.0.0", None)


def test_the_active_record_names_the_model_that_serves(store: ModelStore) -> None:
    assert store.active() is None
    store.set_active(Active("pose", "face"))
    assert store.active() == Active("pose", "face")
    store.set_active(None)
    assert store.active() is None
    (store.models / "active.json").write_text("{not json")
    assert store.active() is None  # set aside (reported): the configured model name serves
    assert any(d["file"].endswith("active.json") for d in damaged_files())


def test_import_records_the_configured_model(store: ModelStore, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"configured")
    version = store.import_file("face", "1.0.0", model, "name: face\n", "ab" * 32)
    assert version == "1.0.0"
    assert store.model_file("face", "1.0.0").read_bytes() == b"configured"
    assert store.imported("face") is not None and store.imported("face").version == "1.0.0"
    assert not any(store.staging.rglob("*.tflite"))
    # Another file under a version the store holds already gets a folder of its own.
    other = tmp_path / "o.tflite"
    other.write_bytes(b"changed")
    version = store.import_file("face", "1.0.0", other, "name: face\n", "cd" * 32)
    assert version == "1.0.0+config.cdcdcdcd"
    assert store.model_file("face", "1.0.0").read_bytes() == b"configured"
