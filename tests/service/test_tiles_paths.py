"""Tile references are confined to the data root: every way out is refused
with the documented status, checked on real files, symlinks, FIFOs, device
nodes and sockets made in a temporary root, with both resolvers: openat2(2)
and the component walk that kernels without it get."""

from __future__ import annotations

import os
import pathlib
import socket
import stat

import numpy as np
import pytest
import tifffile

from service.errors import InvalidInput, NotFound, PermissionDenied, ServiceError, TooLarge, Unsupported
from service.pipeline.payload import TileRef
from service.pipeline.sources import SourceLimits
from service.tiles import TileOpener
from service.tiles.paths import DataRoot, resolve_root


@pytest.fixture()
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """<tmp>/root/{image.tif, sub/inner.tif} and <tmp>/outside/secret.tif."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    pixels = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    for path in (root / "image.tif", root / "sub" / "inner.tif", outside / "secret.tif"):
        tifffile.imwrite(path, pixels, tile=(32, 32))
    return tmp_path


@pytest.fixture(params=["openat2", "walk"])
def root(request: pytest.FixtureRequest, tree: pathlib.Path) -> DataRoot:
    """<tmp>/root held open, resolving references with the resolver under test."""
    data_root = DataRoot(str(tree / "root"), use_openat2=request.param == "openat2")
    assert data_root.uses_openat2 == (request.param == "openat2")  # this kernel has openat2
    return data_root


def refusal(root: DataRoot, reference: str) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        root.open(reference).close()
    assert info.value.field == "tile.path"
    return info.value


def opened_path(root: DataRoot, reference: str) -> str:
    """The real path of the file ``reference`` opens (closed again)."""
    file = root.open(reference)
    try:
        assert stat.S_ISREG(os.fstat(file.fd).st_mode)
        assert file.size == os.path.getsize(file.real_path)
        return file.real_path
    finally:
        file.close()


def test_relative_and_absolute_paths_inside_the_root_open(tree: pathlib.Path, root: DataRoot) -> None:
    for reference in ("image.tif", "sub/inner.tif", "./sub//inner.tif", str(tree / "root" / "image.tif")):
        assert opened_path(root, reference).startswith(root.path + os.sep)


@pytest.mark.parametrize(
    "reference", ["../outside/secret.tif", "sub/../image.tif", "..", "sub/../../outside"]
)
def test_dot_dot_is_denied(root: DataRoot, reference: str) -> None:
    assert isinstance(refusal(root, reference), PermissionDenied)


def test_absolute_path_elsewhere_is_denied(tree: pathlib.Path, root: DataRoot) -> None:
    error = refusal(root, str(tree / "outside" / "secret.tif"))
    assert error.code == "PERMISSION_DENIED"


def test_symlinks_leaving_the_root_are_denied_and_staying_inside_allowed(
    tree: pathlib.Path, root: DataRoot
) -> None:
    inside = tree / "root"
    (inside / "escape.tif").symlink_to(tree / "outside" / "secret.tif")
    (inside / "escape_dir").symlink_to(tree / "outside")
    (inside / "dangling.tif").symlink_to(tree / "outside" / "missing.tif")
    (inside / "sub" / "climb").symlink_to("../../outside/secret.tif")
    (inside / "alias.tif").symlink_to("sub/inner.tif")
    (inside / "sub" / "up.tif").symlink_to("../image.tif")
    (inside / "sub_link").symlink_to("sub")
    (inside / "chain.tif").symlink_to("sub_link/up.tif")
    for reference in ("escape.tif", "escape_dir/secret.tif", "sub/climb"):
        assert isinstance(refusal(root, reference), PermissionDenied), reference
    # a link to a missing file outside says nothing about what exists out there
    assert isinstance(refusal(root, "dangling.tif"), PermissionDenied)
    # relative links that stay beneath the root are followed, ".." inside them included
    assert opened_path(root, "alias.tif") == str(inside / "sub" / "inner.tif")
    assert opened_path(root, "sub/up.tif") == str(inside / "image.tif")
    assert opened_path(root, "sub_link/inner.tif") == str(inside / "sub" / "inner.tif")
    assert opened_path(root, "chain.tif") == str(inside / "image.tif")


def test_absolute_symlinks_are_denied_even_into_the_root(tree: pathlib.Path, root: DataRoot) -> None:
    (tree / "root" / "absolute.tif").symlink_to(tree / "root" / "image.tif")
    assert isinstance(refusal(root, "absolute.tif"), PermissionDenied)


def test_symlink_loops_are_denied(tree: pathlib.Path, root: DataRoot) -> None:
    (tree / "root" / "ping").symlink_to("pong")
    (tree / "root" / "pong").symlink_to("ping")
    (tree / "root" / "self").symlink_to("self/x")
    for reference in ("ping", "self", "ping/x"):
        assert isinstance(refusal(root, reference), PermissionDenied), reference


def test_fifo_is_denied_without_blocking(tree: pathlib.Path, root: DataRoot) -> None:
    os.mkfifo(tree / "root" / "pipe.tif")
    assert isinstance(refusal(root, "pipe.tif"), PermissionDenied)


def test_device_node_is_denied(tree: pathlib.Path, root: DataRoot) -> None:
    # the tests run as root (CI included), which may create device nodes
    os.mknod(tree / "root" / "null.tif", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    assert isinstance(refusal(root, "null.tif"), PermissionDenied)
    (tree / "root" / "dev.tif").symlink_to("/dev/zero")
    assert isinstance(refusal(root, "dev.tif"), PermissionDenied)


def test_socket_is_denied(tree: pathlib.Path, root: DataRoot) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tree / "root" / "sock.tif"))
        assert isinstance(refusal(root, "sock.tif"), PermissionDenied)


@pytest.mark.parametrize("reference", ["sub/absent.tif", "absent/inner.tif", "image.tif/x", "image.tif/"])
def test_missing_file_is_not_found(root: DataRoot, reference: str) -> None:
    error = refusal(root, reference)
    assert isinstance(error, NotFound) and error.code == "NOT_FOUND"


@pytest.mark.parametrize("reference", ["sub", "sub/", ".", "", "a\0b"])
def test_directory_and_empty_path_are_invalid(tree: pathlib.Path, root: DataRoot, reference: str) -> None:
    assert isinstance(refusal(root, reference), InvalidInput)
    assert isinstance(refusal(root, str(tree / "root")), InvalidInput)


@pytest.mark.parametrize(
    "url", ["http://example.org/slide.svs", "s3://bucket/slide.tif", "file:///etc/passwd"]
)
def test_remote_urls_are_refused_with_a_clear_message(root: DataRoot, url: str) -> None:
    error = refusal(root, url)
    assert isinstance(error, Unsupported) and error.code == "UNIMPLEMENTED"
    assert "remote" in error.message and "data root" in error.message


def test_unusable_root_fails_at_start(tree: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        resolve_root(str(tree / "root" / "image.tif"))
    with pytest.raises(ValueError, match="not a directory"):
        TileOpener(str(tree / "nowhere"), 1 << 20)


# -- files that are there but are not servable images -----------------------
LIMITS = SourceLimits(max_image_pixels=10_000_000, max_image_bytes=10 << 20)


def open_ref(root: pathlib.Path, path: str, level: int | None = None, channels: int = 1):
    return TileOpener(str(root), 1 << 20)(TileRef(path, level), channels, LIMITS)


def test_non_images_are_invalid(tree: pathlib.Path) -> None:
    root = tree / "root"
    (root / "notes.txt").write_text("not an image")
    (root / "empty.tif").write_bytes(b"")
    data = (root / "image.tif").read_bytes()
    (root / "truncated.tif").write_bytes(data[:200])
    (root / "fake.svs").write_text("no slide here")
    for name in ("notes.txt", "empty.tif", "truncated.tif", "fake.svs"):
        with pytest.raises(InvalidInput) as info:
            source = open_ref(root, name)
            source.patches(np.zeros((1, 1, 2), np.int32), (8, 8))
        assert info.value.field == "tile.path", name


def test_unsupported_tiff_content_is_invalid(tree: pathlib.Path) -> None:
    root = tree / "root"
    tifffile.imwrite(root / "u16.tif", np.zeros((64, 64), np.uint16), tile=(32, 32))
    tifffile.imwrite(
        root / "planes.tif", np.zeros((4, 64, 64), np.uint8), tile=(32, 32), photometric="minisblack"
    )
    tifffile.imwrite(
        root / "separate.tif",
        np.zeros((3, 64, 64), np.uint8),
        tile=(32, 32),
        photometric="rgb",
        planarconfig="separate",
    )
    for name, expected in (
        ("u16.tif", "uint8"),
        ("planes.tif", "several planes"),
        ("separate.tif", "separate"),
    ):
        with pytest.raises(InvalidInput, match=expected):
            open_ref(root, name)


def test_level_that_does_not_exist_is_invalid(tree: pathlib.Path) -> None:
    for level in (1, -1):
        with pytest.raises(InvalidInput) as info:
            open_ref(tree / "root", "image.tif", level=level)
        assert info.value.field == "tile.level" and "levels 0 to 0" in info.value.message


def test_untiled_image_too_large_for_its_view_is_refused(tree: pathlib.Path) -> None:
    tifffile.imwrite(tree / "root" / "flat.tif", np.zeros((3000, 2000), np.uint8), rowsperstrip=16)
    refusing = TileOpener(str(tree / "root"), 1 << 20)(
        TileRef("flat.tif"), 1, SourceLimits(1_000_000, 1 << 30)
    )
    with pytest.raises(TooLarge, match="no pyramid level"):
        refusing.low_view((150, 100))
    # within the limit the view is made from level 0, strip by strip
    assert open_ref(tree / "root", "flat.tif").low_view((150, 100)).shape == (1, 150, 100, 1)
