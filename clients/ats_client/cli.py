"""``ats-client``: predict on an image, list the models, check health.

ats-client predict IMAGE [--server HOST:PORT] [--model NAME] [--overlay out.png] [--json]
ats-client predict --tile SLIDE [--n-regions K] [--tissue-mask otsu] [--overlay out.png]
ats-client models [--server HOST:PORT] [--json]
ats-client health [--server HOST:PORT] [--service NAME]   (exit 0 only when SERVING)

Against a server with TLS: --tls-ca CA.pem (or --tls for a publicly trusted
certificate), with mutual TLS also --tls-cert and --tls-key; with tokens:
--token, or the ATS_TOKEN environment variable (which keeps it out of the
process list and the shell history).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf import json_format
from PIL import Image

from ats_client.client import AtsClient, AtsError
from ats_client.overlay import write_overlay, write_slide_overlay

if TYPE_CHECKING:
    from ats_api.v1 import attention_sampling_pb2 as pb


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ats-client", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("ATS_SERVER", "localhost:8500"),
        help="HOST:PORT of the server [ATS_SERVER, default localhost:8500]",
    )
    common.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    common.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    common.add_argument("--tls-ca", help="TLS, trusting the CA certificates of this PEM file")
    common.add_argument("--tls-cert", help="client certificate (PEM) for a server that requires one")
    common.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    common.add_argument(
        "--token",
        default=os.environ.get("ATS_TOKEN"),
        help="access token, sent as 'authorization: Bearer' [ATS_TOKEN]",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", parents=[common], help="classify an image")
    predict.add_argument("image", help="PNG, JPEG, TIFF or WebP file; with --tile, a path on the server")
    predict.add_argument(
        "--tile",
        action="store_true",
        help="IMAGE names a (tiled) image under the server's --data-root: no pixels are sent",
    )
    predict.add_argument("--level", type=int, default=None, help="with --tile: pyramid level hint")
    predict.add_argument("--model", default="", help="model name (default: the server's default)")
    predict.add_argument("--version", type=int, default=0, help="model version (default: latest)")
    predict.add_argument("--n-patches", type=int, default=0, help="patches (default: the model's)")
    predict.add_argument("--seed", type=int, default=None, help="sampler seed (default: random)")
    predict.add_argument("--mode", choices=("sample", "top_k"), default="sample")
    predict.add_argument(
        "--n-regions", type=int, default=0, help="two-level models: regions (default: the model's)"
    )
    predict.add_argument(
        "--tissue-mask",
        choices=("off", "otsu"),
        default="off",
        help="two-level models: zero attention on background (glass) of the coarse view",
    )
    predict.add_argument(
        "--overlay",
        help="write the attention heat map and patch boxes to this PNG (with --tile: on the "
        "coarse view a two-level model's server returns, with the region boxes)",
    )
    predict.add_argument("--json", action="store_true", help="print the full response as JSON")
    models = commands.add_parser("models", parents=[common], help="list models and versions")
    models.add_argument("--json", action="store_true")
    health = commands.add_parser("health", parents=[common], help="exit 0 when SERVING")
    health.add_argument("--service", default="", help="a model name, or empty for the whole server")
    return parser


def _print_prediction(response: pb.PredictResponse) -> None:
    print(
        f"model {response.model_name} v{response.model_version}: {response.label} "
        f"(class {response.class_index})"
    )
    for p in sorted(response.probabilities, key=lambda p: -p.probability):
        print(f"  {p.name:>12s}  {p.probability:.4f}")
    print(f"patches (x, y, width, height, attention) of {response.image_width}x{response.image_height}:")
    for region_index, region in enumerate(response.two_level.regions):
        print(
            f"region {region_index} (x, y, width, height, attention): {region.x:6d} {region.y:6d} "
            f"{region.width:4d} {region.height:4d}  {region.probability:.4f}"
        )
    for patch in response.patches:
        region = f"  region {patch.region}" if patch.HasField("region") else ""
        print(
            f"  {patch.x:6d} {patch.y:6d} {patch.width:4d} {patch.height:4d}  {patch.probability:.4f}{region}"
        )
    print("timings: " + ", ".join(f"{t.stage} {t.seconds * 1000:.1f} ms" for t in response.timings))


def _predict(client: AtsClient, args: argparse.Namespace) -> int:
    options = {
        "model": args.model,
        "version": args.version,
        "n_patches": args.n_patches,
        "seed": args.seed,
        "mode": args.mode,
        "attention_map": True,
        "n_regions": args.n_regions,
        "tissue_mask": args.tissue_mask,
    }
    if args.tile:
        response = client.predict_tile(
            args.image, level=args.level, coarse_view=bool(args.overlay), **options
        )
    else:
        response = client.predict(args.image, **options)
    if args.overlay and args.tile and not response.two_level.coarse_view.shape:
        print(
            "--overlay on a tile reference needs a two-level model (it returns the coarse view): not drawn",
            file=sys.stderr,
        )
        args.overlay = None
    elif args.overlay and args.tile:
        write_slide_overlay(response, args.overlay)
    elif args.overlay:
        with Image.open(args.image) as image:
            write_overlay(np.asarray(image.convert("RGB")), response, args.overlay)
    if args.json:
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True)))
    else:
        _print_prediction(response)
        if args.overlay:
            print(f"overlay written to {args.overlay}")
    return 0


def _models(client: AtsClient, args: argparse.Namespace) -> int:
    listing = client.list_models()
    if args.json:
        print(json.dumps(json_format.MessageToDict(listing, preserving_proto_field_name=True)))
        return 0
    for model in listing.models:
        default = " (default)" if model.name == listing.default_model else ""
        print(
            f"{model.name}{default}: {len(model.classes)} classes, patch {list(model.patch_size)}, "
            f"{model.n_patches} patches (max {model.max_patches}), low scale {model.low_scale:g}"
        )
        if model.HasField("two_level"):
            two = model.two_level
            print(
                f"  two-level: {two.n_regions} regions (max {two.max_regions}) of "
                f"{'x'.join(map(str, two.region_size))} seen at {two.fine_scale:g}; patches are per region"
            )
        for version in model.versions:
            state = type(version).State.Name(version.state)
            print(f"  version {version.version}: {state} {version.message}".rstrip())
    return 0


def _health(client: AtsClient, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    retries = 0 if args.command == "health" else 4
    try:
        client = AtsClient(
            args.server,
            timeout=args.timeout,
            retries=retries,
            tls=args.tls,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token=args.token,
        )
    except ValueError as error:
        parser.error(str(error))
    except OSError as error:  # an unreadable certificate or key
        parser.error(f"{error.strerror or error}: {error.filename}")
    with client:
        try:
            return {"predict": _predict, "models": _models, "health": _health}[args.command](client, args)
        except AtsError as error:
            print(f"error: {error}", file=sys.stderr)
            for field, description in error.fields.items():
                print(f"  field {field}: {description}", file=sys.stderr)
            return 2
        except OSError as error:  # an unreadable image or overlay path: say which, no traceback
            print(f"error: {error.strerror or error}: {error.filename}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    raise SystemExit(main())
