"""The bulk of the fuzzing, in process (thousands of inputs a second): damaged
uploads through the decode stage and malformed tensors through their
validation. A refusal must be the client's error (INVALID_ARGUMENT, or
RESOURCE_EXHAUSTED for the limits); any other exception is a bug, reported
with its type, where Pillow raised it, and a reproducer."""

from __future__ import annotations

import collections
import math
import random
import traceback
from collections.abc import Callable, Iterable

import pytest

from service.errors import InvalidInput, ServiceError, TooLarge
from service.pipeline import decode
from service.pipeline.payload import RawTensor
from tests.fuzz import apply, header_forgeries, mutate
from tests.fuzz.atheris_decode import MAX_BYTES, MAX_PIXELS, seeds

SEED = 20240611
RANDOM_MUTATIONS = 12_000
CUTS_PER_SEED = 48  # plus every cut inside the first 64 bytes

SEEDS = seeds()


def outcome(run: Callable[..., object], *args: object) -> str:
    """ "ok", the refusal's code, or the unexpected exception with where it was raised."""
    try:
        run(*args)
    except (InvalidInput, TooLarge) as err:
        return err.code.value
    except Exception as err:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        return f"{type(err).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}: {err}"[:200]
    return "ok"


def check(cases: Iterable[tuple[str, bytes]]) -> collections.Counter[str]:
    """Decode every case for a one- and a three-channel model; fail on anything but
    pixels or the client's error, naming one case per kind of failure."""
    counts: collections.Counter[str] = collections.Counter()
    failures: dict[str, str] = {}
    for label, data in cases:
        for channels in (1, 3):
            result = outcome(decode.decode_image, data, channels, MAX_PIXELS, MAX_BYTES)
            kind = result.split(":", 1)[0]
            counts[kind] += 1
            if kind not in ("ok", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
                failures.setdefault(kind, f"{label} ({channels} channels): {result}")
    assert not failures, f"outcomes {dict(counts)}; one case per failure:\n" + "\n".join(failures.values())
    return counts


def test_random_mutations_of_every_format():
    rng = random.Random(SEED)
    names = sorted(SEEDS)

    def cases() -> Iterable[tuple[str, bytes]]:
        for i in range(RANDOM_MUTATIONS):
            name = names[i % len(names)]
            yield f"mutation {i} of {name} (random.Random({SEED}))", mutate(SEEDS[name], rng)

    counts = check(cases())
    # the mutations must reach both sides: files still decoded, and files refused
    assert min(counts["ok"], counts["INVALID_ARGUMENT"]) > RANDOM_MUTATIONS // 10, counts


def test_every_header_forgery():
    """Every edge value in every header field of every seed (about 10,000 files)."""
    cases = (
        (f"{name} with {new.hex()} at byte {at}", apply(data, (at, new)))
        for name, data in SEEDS.items()
        for at, new in header_forgeries(data)
    )
    counts = check(cases)
    assert counts["RESOURCE_EXHAUSTED"] > 0, counts  # forged sizes met the pixel limit


def test_truncations():
    def cases() -> Iterable[tuple[str, bytes]]:
        for name, data in SEEDS.items():
            step = max(1, len(data) // CUTS_PER_SEED)
            for cut in sorted({*range(min(64, len(data))), *range(0, len(data), step)}):
                yield f"{name} cut to {cut} bytes", data[:cut]

    counts = check(cases())
    assert counts["INVALID_ARGUMENT"] > 0.9 * counts.total(), counts


def test_seeds_decode():
    """The undamaged files decode (the refused modes aside), so the damage above is what fails."""
    results = {
        name: outcome(decode.decode_image, data, 3, MAX_PIXELS, MAX_BYTES) for name, data in SEEDS.items()
    }
    refused = {name for name, result in results.items() if result != "ok"}
    assert refused == {"tiff-float32.tif", "tiff-int32.tif"}, results


def _tensor_cases(rng: random.Random) -> Iterable[RawTensor]:
    sizes = (-(2**63), -(2**31), -1, 0, 1, 2, 3, 4, 64, 2**31 - 1, 2**32, 2**63 - 1)
    for _ in range(3000):
        rank = rng.choice((0, 1, 2, 3, 3, 3, 4, 9))
        shape = tuple(rng.choice(sizes) if rng.random() < 0.3 else rng.randint(1, 48) for _ in range(rank))
        dtype = rng.choice(("uint8", "uint8", "uint8", "uint16", "float32", "", "int8"))
        size = math.prod(shape)
        if 0 < size <= 1 << 16 and rng.random() < 0.7:
            length = size + rng.choice((0, 0, -1, 1, 7))
        else:
            length = rng.randint(0, 4096)
        yield RawTensor(shape=shape, dtype=dtype, data=rng.randbytes(max(0, length)))


@pytest.mark.parametrize("channels", [1, 3])
def test_malformed_tensors(channels):
    counts: collections.Counter[str] = collections.Counter()
    for tensor in _tensor_cases(random.Random(SEED + channels)):
        result = outcome(decode.tensor_pixels, tensor, channels, MAX_PIXELS, MAX_BYTES)
        counts[result.split(":", 1)[0]] += 1
        assert result in ("ok", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), (
            tensor.shape,
            tensor.dtype,
            result,
        )
    assert min(counts["ok"], counts["INVALID_ARGUMENT"], counts["RESOURCE_EXHAUSTED"]) > 0, counts


@pytest.mark.parametrize("error", [AttributeError("a bug"), ServiceError("internal")])
def test_a_bug_is_reported_not_counted_as_a_refusal(error):
    """The checks above can fail: anything but the client's error is named with where it was raised."""

    def raises() -> None:
        raise error

    assert outcome(raises).startswith(f"{type(error).__name__} at test_fuzz_decode.py")
