"""``--precision bfloat16``: a real server on the shipped model answers within a
small distance of float32 (computed in this process, which stays float32),
not bitwise alike (the rewrite took effect); a CPU without bfloat16
instructions refuses the flag at start instead of running emulated."""

from __future__ import annotations

import numpy as np
import pytest

from ats_client import AtsClient
from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from service import precision
from service.config import load_config
from tests.support import encode_image

CANVASES = 6
MODELS = ("megapixel-digits", "gigapixel-digits")

ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\nbugs\t\t: avx512_bf16\n"
SAPPHIRE = "flags\t: fpu avx512f amx_bf16 amx_tile\n"


def test_bfloat16_instructions_are_read_from_the_flags_line():
    assert precision.cpu_has_bfloat16(ZEN4) and precision.cpu_has_bfloat16(SAPPHIRE)
    assert not precision.cpu_has_bfloat16(SKYLAKE)  # a word elsewhere does not count
    assert not precision.cpu_has_bfloat16("")


def test_unknown_precisions_are_refused():
    with pytest.raises(SystemExit):
        load_config(["--precision", "float16"])
    with pytest.raises(precision.PrecisionError, match="unknown precision"):
        precision.apply("float16")
    config, _ = load_config([], {"ATS_PRECISION": "bfloat16"})
    assert config.precision == "bfloat16"


def float32_answers(canvases: list[np.ndarray]) -> list[np.ndarray]:
    """The shipped model's probabilities in this (float32) process, top-k patches."""
    from model_ops.export import latest_version
    from service.config import default_model_repository
    from service.models.servable import load_servable
    from service.pipeline import runner
    from service.pipeline.payload import EncodedImage
    from service.pipeline.prediction import PredictOptions
    from service.pipeline.sources import SourceLimits, SourceRegistry

    newest = latest_version(default_model_repository() / MODELS[0])
    servable = load_servable(MODELS[0], int(newest.name), newest)
    sources = SourceRegistry(SourceLimits(max_image_pixels=10**8, max_image_bytes=1 << 28))
    options = PredictOptions(mode="top_k", seed=0)
    return [
        runner.run(servable, EncodedImage(encode_image(c)), options, sources).probabilities for c in canvases
    ]


def test_a_bfloat16_server_answers_close_to_float32_or_refuses_to_start(start_server):
    server = start_server(None, "--precision", "bfloat16", "--default-model", MODELS[0], wait=False)
    if not precision.cpu_has_bfloat16():
        assert server.process.wait(timeout=120) != 0
        assert "AVX512_BF16 or AMX" in server.log_path.read_text()
        return
    server.wait_serving(MODELS)
    layouts = [make_layout(CanvasSpec(), "test", seed=77, index=i) for i in range(CANVASES)]
    canvases = [render_canvas(layout)[..., 0] for layout in layouts]
    with AtsClient(server.target) as client:
        served = [client.predict(encode_image(c), mode="top_k", seed=0) for c in canvases]
    differences = []
    for response, want in zip(served, float32_answers(canvases), strict=True):
        got = np.array([p.probability for p in response.probabilities])
        assert response.label == str(int(np.argmax(want)))
        differences.append(np.abs(got - want).max())
    assert max(differences) < 0.15, differences  # bench/results/service.md: the distribution
    assert max(differences) > 0, "bitwise float32 answers: the bfloat16 rewrite did not run"
