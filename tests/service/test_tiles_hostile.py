"""Hostile tile references: refusals leak no descriptor, a symlink swapped
during requests never lets a read escape the data root, and malformed or
mutated files of every format come back as documented refusals, never as
internal errors. Checked in process (``TileOpener``) and against a real
``ats-serve`` process with ``--data-root``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import io
import logging
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import imagecodecs
import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from ats_client import AtsClient, AtsError
from bench.common import ServerProcess
from service.errors import Code, InvalidInput, ServiceError, TooLarge
from service.pipeline.payload import TileRef
from service.pipeline.sources import SourceLimits
from service.tiles import TileOpener
from service.tiles.opener import MAX_OPEN_READERS
from service.tiles.paths import DataRoot
from service.tiles.readers import frames
from service.tiles.readers.base import unreadable_is_invalid
from tests.fuzz.atheris_tiles import DOCUMENTED, exercise, fuzz_one, seeds, tiff_entries
from tests.support import TINY_MODEL

pytestmark = pytest.mark.slow  # a minute: a server process, 30 s of mutations, thousands of requests

LIMITS = SourceLimits(max_image_pixels=10_000_000, max_image_bytes=10 << 20)
INSIDE, OUTSIDE = 17, 230  # the pixels of the file inside the root and of the one outside
INSIDE_SHAPE, OUTSIDE_SHAPE = (64, 64), (72, 72)


# -- the trees ---------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_tree(root: pathlib.Path, outside: pathlib.Path) -> dict[tuple[str, int | None], Code]:
    """Write every kind of refused reference under ``root`` (and a secret in
    ``outside``), plus ``good.tif``; returns (path, level) -> the status it must get."""
    made = seeds()
    pixels = np.full(INSIDE_SHAPE, INSIDE, np.uint8)
    tifffile.imwrite(root / "good.tif", pixels, tile=(16, 16))
    tifffile.imwrite(outside / "secret.tif", np.full(OUTSIDE_SHAPE, OUTSIDE, np.uint8), tile=(16, 16))
    (root / "notes.txt").write_text("not an image")
    (root / "fake.svs").write_text("no slide here")
    (root / "slide.mrxs").write_text("[GENERAL]\n")
    (root / "garbage.tif").write_bytes(b"II*\0" + np.random.default_rng(1).bytes(300))
    forged = (
        "truncated.tif",
        "tile_width_0.tif",
        "bigtiff_header.tif",
        "page_chain_loop.tif",
        "subifd_cycle.tif",
    )
    for name in forged:
        (root / name).write_bytes(made[name])
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10 gigapixels, announced
    (root / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    )
    (root / "sub").mkdir()
    (root / "escape.tif").symlink_to(outside / "secret.tif")
    os.mkfifo(root / "pipe.tif")
    invalid, denied = Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED
    return {
        **{(name, None): invalid for name in ("notes.txt", "fake.svs", "garbage.tif", "sub")},
        **{(name, None): invalid for name in forged},
        ("good.tif", 7): invalid,  # a level that does not exist, on a reader already cached
        ("huge.png", None): Code.RESOURCE_EXHAUSTED,
        ("slide.mrxs", None): Code.UNIMPLEMENTED,
        ("missing.tif", None): Code.NOT_FOUND,
        ("../outside/secret.tif", None): denied,
        ("escape.tif", None): denied,
        ("pipe.tif", None): denied,
        (str(outside / "secret.tif"), None): denied,
    }


def swap_tree(root: pathlib.Path, outside: pathlib.Path) -> None:
    """``root/d`` a directory holding image.tif, ``root/swap`` a symlink to ``outside``,
    which holds an image.tif of another size and other pixels."""
    (root / "d").mkdir()
    tifffile.imwrite(root / "d" / "image.tif", np.full(INSIDE_SHAPE, INSIDE, np.uint8), tile=(16, 16))
    tifffile.imwrite(outside / "image.tif", np.full(OUTSIDE_SHAPE, OUTSIDE, np.uint8), tile=(16, 16))
    (root / "swap").symlink_to(os.path.relpath(outside, root))


# Exchanges <root>/d and <root>/swap atomically in a tight loop until killed. A process, not a
# thread: a thread of this process would swap only when it holds the GIL, far less often.
_SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
root = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
print("swapping", flush=True)
while libc.renameat2(root, b"d", root, b"swap", 2) == 0:  # RENAME_EXCHANGE
    pass
raise OSError(ctypes.get_errno(), "renameat2")
"""


@contextlib.contextmanager
def swapping(root: pathlib.Path) -> Iterator[None]:
    """``root/d`` and ``root/swap`` exchanged (renameat2 RENAME_EXCHANGE) non-stop while the block runs."""
    swapper = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "swapping\n"
        yield
        assert swapper.poll() is None, "the swapper stopped"
    finally:
        swapper.kill()
        swapper.wait()


def race(request: Callable[[], str], minimum: int, timeout: float = 30.0) -> Counter[str]:
    """Outcomes of ``request()`` ("inside", "OUTSIDE" or a status) while ``d`` is
    swapped: at least ``minimum`` requests, and more until the link has been met
    both ways a few times (or ``timeout`` passes)."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while sum(outcomes.values()) < minimum or (
        min(outcomes["inside"], outcomes["PERMISSION_DENIED"]) < 10 and time.monotonic() < deadline
    ):
        outcomes[request()] += 1
    return outcomes


def open_fds(pid: int | str = "self") -> list[str]:
    """What each open descriptor of ``pid`` refers to."""
    fd_dir = f"/proc/{pid}/fd"
    targets = []
    for name in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor is gone by now
            targets.append(os.readlink(f"{fd_dir}/{name}"))
    return targets


def wait_for_fds(pid: int | str, count: int, timeout: float = 10.0) -> list[str]:
    """The descriptors of ``pid`` once there are ``count`` of them (or at ``timeout``):
    released sources close their readers when collected."""
    deadline = time.monotonic() + timeout
    while len(fds := open_fds(pid)) != count and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return fds


# -- in process ----------------------------------------------------------------------
@pytest.fixture()
def dirs(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def refusal_code(opener: TileOpener, path: str, level: int | None) -> Code | None:
    """The status a request for ``path`` is refused with, or None if it reads."""
    try:
        exercise(opener, path, level)
    except ServiceError as err:
        return err.code
    return None


def test_refusals_leak_no_descriptor_in_process(dirs: tuple[pathlib.Path, pathlib.Path]) -> None:
    cases = hostile_tree(*dirs)
    opener = TileOpener(str(dirs[0]), 1 << 20)
    opener(TileRef("good.tif"), 3, LIMITS).low_view((8, 8))  # warm-up: one reader cached
    for (path, level), code in cases.items():
        assert refusal_code(opener, path, level) == code, path
    gc.collect()
    before = open_fds()
    rounds = 2000 // len(cases) + 1
    for _ in range(rounds):
        for path, level in cases:
            refusal_code(opener, path, level)
    assert rounds * len(cases) >= 2000
    assert sorted(wait_for_fds("self", len(before))) == sorted(before)
    assert opener(TileRef("good.tif"), 3, LIMITS).patches(tf.zeros((1, 1, 2), tf.int32), (8, 8)).shape == (
        1,
        1,
        8,
        8,
        3,
    )


def test_evicted_readers_are_closed_but_never_under_a_request(tmp_path: pathlib.Path) -> None:
    files = MAX_OPEN_READERS + 8
    for i in range(files):
        tifffile.imwrite(tmp_path / f"{i}.tif", np.full((32, 32), i, np.uint8), tile=(16, 16))
    opener = TileOpener(str(tmp_path), 1 << 20)
    gc.collect()  # earlier tests' openers, closed when collected
    baseline = len(open_fds())
    held = opener(TileRef("0.tif"), 1, LIMITS)  # a request still running while its reader is evicted
    for i in range(1, files):
        opener(TileRef(f"{i}.tif"), 1, LIMITS)
    # every evicted reader no request uses is closed; the held one stays open
    assert len(wait_for_fds("self", baseline + MAX_OPEN_READERS + 1)) == baseline + MAX_OPEN_READERS + 1
    crop = held.patches(tf.constant([[[0, 0]]], tf.int32), (32, 32)).numpy()
    assert (crop == 0).all() and crop.shape == (1, 1, 32, 32, 1)  # its file still reads
    del held  # the request ends: its evicted reader closes now
    assert len(wait_for_fds("self", baseline + MAX_OPEN_READERS)) == baseline + MAX_OPEN_READERS

    # many requests at once over more files than the cache holds: concurrent opens of one
    # file share one reader, and whatever is not cached is closed
    def hammer(seed: int) -> Counter[str]:
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, files, 150):
            source = opener(TileRef(f"{i}.tif"), 1, LIMITS)
            assert source.patches(tf.constant([[[0, 0]]], tf.int32), (4, 4)).numpy().max() == i
        return Counter(read=150)

    assert in_parallel(hammer, 6)["read"] == 900
    assert len(wait_for_fds("self", baseline + MAX_OPEN_READERS)) == baseline + MAX_OPEN_READERS


@pytest.mark.parametrize("resolver", ["openat2", "walk"])
def test_symlink_swapped_during_requests_never_reads_outside(
    dirs: tuple[pathlib.Path, pathlib.Path], resolver: str
) -> None:
    root, outside = dirs
    swap_tree(root, outside)
    data_root = DataRoot(str(root), use_openat2=resolver == "openat2")
    assert data_root.uses_openat2 == (resolver == "openat2")
    opener = TileOpener(data_root, 1 << 20)

    def request() -> str:
        try:
            source = opener(TileRef("d/image.tif"), 1, LIMITS)
        except ServiceError as err:
            return err.code.value
        pixels = source.patches(tf.constant([[[0, 0]]], tf.int32), (8, 8)).numpy()
        return "inside" if source.shape[:2] == INSIDE_SHAPE and (pixels == INSIDE).all() else "OUTSIDE"

    with swapping(root):
        outcomes = race(request, minimum=3000)
    assert set(outcomes) <= {"inside", "PERMISSION_DENIED"}, outcomes
    # the race really ran: the link was met both ways
    assert min(outcomes["inside"], outcomes["PERMISSION_DENIED"]) >= 10, outcomes


def test_parser_failures_are_refused_and_unexpected_ones_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A library's documented failure on a client's file is a quiet refusal; any other
    exception is refused too but logged with its traceback (it may be a bug); the
    service's own errors pass unchanged."""
    caplog.set_level(logging.WARNING)
    expected_only = ("not a readable X", (ValueError,))
    with (
        pytest.raises(InvalidInput, match="not a readable X: 'bad tag'"),
        unreadable_is_invalid(*expected_only),
    ):
        raise ValueError("bad tag")
    assert not caplog.records
    with (
        pytest.raises(InvalidInput, match="not a readable X: LookupError: 'no such thing'"),
        unreadable_is_invalid(*expected_only),
    ):
        raise LookupError("no such thing")
    [record] = caplog.records
    assert (
        record.levelno == logging.WARNING and record.exc_info and "unexpected LookupError" in record.message
    )
    refusal = TooLarge("over the limit")
    with pytest.raises(TooLarge) as info, unreadable_is_invalid(*expected_only):
        raise refusal
    assert info.value is refusal


# -- image codecs ---------------------------------------------------------------------
ENCODERS = {
    "jpeg": imagecodecs.jpeg8_encode,
    "jpeg2000": imagecodecs.jpeg2k_encode,
    "webp": imagecodecs.webp_encode,
    "png": imagecodecs.png_encode,
}


def pillow_webp(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "WEBP", quality=80)  # lossy; with alpha: extended (VP8X)
    return buffer.getvalue()


def test_announced_sizes_are_read_from_every_checked_codec() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 128, np.uint8)], axis=-1)
    streams = {
        "jpeg": (frames.jpeg, imagecodecs.jpeg8_encode(rgb)),
        "jpeg2000": (frames.jpeg2000, imagecodecs.jpeg2k_encode(rgb)),
        "png": (frames.png, imagecodecs.png_encode(rgb)),
        "webp VP8L": (frames.webp, imagecodecs.webp_encode(rgb, lossless=True)),
        "webp VP8": (frames.webp, pillow_webp(rgb)),
        "webp VP8X": (frames.webp, pillow_webp(rgba)),
    }
    for name, (announced_size, stream) in streams.items():
        assert announced_size(stream) == (30, 40), name
        assert announced_size(stream[: len(stream) // 8]) in (None, (30, 40)), name  # cut: never garbage
    assert frames.jpeg(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan before any frame header


@pytest.mark.parametrize("codec", sorted(ENCODERS))
def test_tiles_whose_stream_announces_more_than_the_tile_are_refused(
    tmp_path: pathlib.Path, codec: str
) -> None:
    encode, rng = ENCODERS[codec], np.random.default_rng(4)
    tiles = [encode(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    for name, first in (("honest.tif", tiles[0]), ("forged.tif", encode(np.zeros((48, 48, 3), np.uint8)))):
        tifffile.imwrite(
            tmp_path / name,
            iter([first, *tiles[1:]]),  # encoded segments, written as they are
            shape=(32, 32, 3),
            dtype=np.uint8,
            tile=(16, 16),
            compression=codec,
            photometric="rgb",
        )
    opener = TileOpener(str(tmp_path), 1 << 20)
    exercise(opener, "honest.tif")
    with pytest.raises(InvalidInput, match=r"announces \(48, 48\) image size, the tile is 16x16"):
        exercise(opener, "forged.tif")


def test_jpeg_tile_announcing_gigapixels_is_refused_before_decoding(tmp_path: pathlib.Path) -> None:
    """A 4 KB file whose JPEG tiles claim 65000 x 65000 pixels: decoded, that is
    12 GB and minutes; refused from the frame header, it is milliseconds."""
    (tmp_path / "bomb.tif").write_bytes(seeds()["jpeg_tiles_claiming_65000.tif"])
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"announces \(65000, 65000\)"):
        exercise(TileOpener(str(tmp_path), 1 << 20), "bomb.tif")
    assert time.monotonic() - started < 5


def test_image_codecs_whose_size_is_not_checked_are_not_served(tmp_path: pathlib.Path) -> None:
    tifffile.imwrite(
        tmp_path / "jxl.tif",
        np.zeros((32, 32, 3), np.uint8),
        tile=(16, 16),
        compression="jpegxl",
        photometric="rgb",
    )
    with pytest.raises(InvalidInput, match="compression JPEGXL"):
        exercise(TileOpener(str(tmp_path), 1 << 20), "jxl.tif")


# -- mutations -------------------------------------------------------------------------
_BOUNDARY = (0, 1, 2, 7, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def _forge_tiff(data: bytes, rng: np.random.Generator) -> bytes:
    """One IFD entry's count or value (of any page) set to a boundary or random number."""
    entries = tiff_entries(data)
    if not entries:
        return data
    entry, order, big = entries[rng.integers(len(entries))]
    forged = bytearray(data)
    width = 8 if big else 4
    at = entry + (4 if rng.random() < 0.25 else 4 + width)  # count, or value / value offset
    value = int(rng.choice([*_BOUNDARY, len(data), len(data) - 1, int(rng.integers(0, 2**31))]))
    forged[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little" if order == "<" else "big")
    return bytes(forged)


def _forge_chunk(data: bytes, rng: np.random.Generator) -> bytes:
    """A PNG's IHDR (CRC kept valid) or a JPEG's frame header with forged dimensions."""
    forged = bytearray(data)
    side = int(rng.choice(_BOUNDARY[:9]))
    if data.startswith(b"\x89PNG"):
        struct.pack_into(">I", forged, 16 + 4 * int(rng.integers(2)), side)
        struct.pack_into(">I", forged, 29, zlib.crc32(bytes(forged[12:29])))
        return bytes(forged)
    sof = data.find(b"\xff\xc0")
    if sof < 0:
        return data
    struct.pack_into(">H", forged, sof + 5 + 2 * int(rng.integers(2)), side & 0xFFFF)
    return bytes(forged)


def mutations(seed: int) -> Iterator[tuple[str, bytes]]:
    """Seeded endless mutations of the fuzz seeds: byte flips, truncations,
    inserted junk and header forgeries; yields (how, bytes)."""
    rng = np.random.default_rng(seed)
    originals = list(seeds().items())
    while True:
        name, data = originals[rng.integers(len(originals))]
        kind = ["flip", "truncate", "insert", "forge"][rng.integers(4)]
        if kind == "flip":
            mutated = bytearray(data)
            for at in rng.integers(0, len(data), rng.integers(1, 9)):
                mutated[at] = int(rng.integers(256))
            data = bytes(mutated)
        elif kind == "truncate":
            data = data[: rng.integers(0, len(data))]
        elif kind == "insert":
            at = int(rng.integers(0, len(data)))
            data = data[:at] + rng.bytes(int(rng.integers(1, 64))) + data[at:]
        else:
            data = _forge_tiff(data, rng) if data[:2] in (b"II", b"MM") else _forge_chunk(data, rng)
        yield f"{kind} {name}", data


def test_mutated_files_in_process_are_documented_refusals() -> None:
    """Every mutation opened as .tif and .svs, low view and patches read
    (``fuzz_one``): only documented ServiceErrors come out. Seeded, 30 s at most."""
    deadline, done = time.monotonic() + 30, Counter[str]()
    for how, data in mutations(seed=2024):
        try:
            fuzz_one(data)
        except Exception as err:
            raise AssertionError(f"{how} ({len(data)} bytes {data[:64]!r}...) raised {err!r}") from err
        done[how.split()[0]] += 1
        if time.monotonic() > deadline or sum(done.values()) == 4000:
            break
    assert min(done.values()) >= 50 and len(done) == 4, done


# -- a real server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path
) -> Iterator[tuple[ServerProcess, AtsClient, pathlib.Path, pathlib.Path]]:
    """(server, client, data root, outside) of an ats-serve process serving the tiny model."""
    base = tmp_path_factory.mktemp("hostile")
    repository, root, outside = base / "repo", base / "root", base / "outside"
    shutil.copytree(tiny_model_dir, repository / TINY_MODEL / "1")
    root.mkdir()
    outside.mkdir()
    process = ServerProcess(repository, base / "server.log", "--drain-delay", "0", "--data-root", str(root))
    try:
        process.wait_serving()
        with AtsClient(process.target, retries=0, timeout=60) as client:
            yield process, client, root, outside
    finally:
        process.kill()


def served_code(client: AtsClient, path: str, level: int | None = None) -> str:
    try:
        client.predict_tile(path, level=level)
    except AtsError as err:
        return err.code.name
    return "OK"


def in_parallel(work: Callable[[int], Counter[str]], parts: int = 4) -> Counter[str]:
    """``work(0)`` ... ``work(parts - 1)`` in threads: their counts summed, their exceptions raised."""
    with concurrent.futures.ThreadPoolExecutor(parts) as pool:
        return sum(pool.map(work, range(parts)), Counter())


def test_refusals_leak_no_descriptor_in_the_server(server) -> None:
    process, client, root, outside = server
    (root / "leak").mkdir()
    cases = hostile_tree(root / "leak", outside)  # references are relative to the data root
    cases = {(p if p.startswith("/") else f"leak/{p}", level): code for (p, level), code in cases.items()}
    cases[("leak/../../outside/secret.tif", None)] = Code.PERMISSION_DENIED
    assert served_code(client, "leak/good.tif") == "OK"  # a reader cached
    for (path, level), code in cases.items():
        assert served_code(client, path, level) == code.value, path

    def send(references: list[tuple[str, int | None]]) -> Callable[[int], Counter[str]]:
        return lambda part: Counter(served_code(client, path, level) for path, level in references[part::4])

    in_parallel(send(list(cases) * 4))  # warm-up at the measured concurrency: the server's own threads
    pid = process.process.pid
    before = open_fds(pid)
    codes = in_parallel(send(list(cases) * (2000 // len(cases) + 1)))
    assert sum(codes.values()) >= 2000 and "OK" not in codes and "INTERNAL" not in codes, codes
    after = wait_for_fds(pid, len(before))
    assert len(after) == len(before), (sorted(before), sorted(after))
    assert sorted(t for t in after if str(root) in t) == sorted(t for t in before if str(root) in t)
    assert served_code(client, "leak/good.tif") == "OK"


def test_symlink_swapped_during_served_requests_never_reads_outside(server) -> None:
    _, client, root, outside = server
    (root / "race").mkdir()
    (outside / "race").mkdir()
    swap_tree(root / "race", outside / "race")

    def request() -> str:
        try:
            response = client.predict_tile("race/d/image.tif", mode="top_k", patch_crops=True)
        except AtsError as err:
            return err.code.name
        pixels = np.concatenate([np.frombuffer(p.crop.data, np.uint8) for p in response.patches])
        inside = (response.image_height, response.image_width) == INSIDE_SHAPE and (pixels == INSIDE).all()
        return "inside" if inside else "OUTSIDE"

    with swapping(root / "race"):
        outcomes = race(request, minimum=300)
    assert set(outcomes) <= {"inside", "PERMISSION_DENIED"}, outcomes
    assert min(outcomes["inside"], outcomes["PERMISSION_DENIED"]) >= 10, outcomes


def test_mutated_files_through_the_server_are_documented_refusals(server) -> None:
    _, client, root, _ = server
    (root / "fuzz").mkdir()
    references = []
    for i, (_, data) in zip(range(120), mutations(seed=7), strict=False):
        for suffix in (".tif", ".svs"):
            (root / "fuzz" / f"{i}{suffix}").write_bytes(data)
            references.append(f"fuzz/{i}{suffix}")
    allowed = {"OK", *(code.value for code in DOCUMENTED)}

    def send(part: int) -> Counter[str]:
        codes = Counter[str]()
        for path in references[part::4]:
            code = served_code(client, path)
            assert code in allowed, (path, code)
            codes[code] += 1
        return codes

    codes = in_parallel(send)
    assert sum(codes.values()) == len(references) and codes["INVALID_ARGUMENT"] > 0, codes
