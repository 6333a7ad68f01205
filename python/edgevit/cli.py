"""``edgevit`` command line. Each sub-command calls one public function of :mod:`edgevit.api`;
failures print one line (``edgevit: error: ...``) and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import EdgevitError


def _cmd_list(a: argparse.Namespace) -> None:
    from .models import list_models

    print("\n".join(list_models(a.pattern)))


def _cmd_info(a: argparse.Namespace) -> None:
    from .api import model_info

    info = model_info(a.model)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
        return
    c, pub = info["contract"], info["published"]
    inp, outp = c["inputs"][0], c["outputs"][0]
    print(f"{info['id']}  ({info['family']}, {c['task']})")
    print(f"  params   {info['params'] / 1e6:.3f}M   (published {pub['params']}, {100 * info['params_vs_published']:+.2f}%)")
    print(f"  MACs     {info['macs'] / 1e9:.2f}G at {'x'.join(map(str, info['macs_input'][2:]))}"
          f"   (published {pub['macs']}, {100 * info['macs_vs_published']:+.2f}%)")
    print(f"  input    {inp['name']} {inp['dtype']} {inp['layout']} {inp['shape']}: {inp['description']}")
    print(f"  norm     mean {c['normalization']['mean']} std {c['normalization']['std']}")
    print(f"  resize   {c['resize']}")
    print(f"  output   {outp['name']} {outp['dtype']} {outp['layout']} {outp['shape']}")
    print(f"  labels   {c['labels']['name']} ({len(c['labels']['classes'])} classes, ignore {c['labels']['ignore_index']})")
    print(f"  card     published mIoU {pub['miou']} at {pub['resolution']}; checkpoint {info['card']['upstream_checkpoint']}")


def _cmd_predict(a: argparse.Namespace) -> None:
    from .api import predict

    summary = predict(a.model, a.images, a.out, weights=a.weights)
    print(f"wrote {2 * len(summary['images'])} images and summary.json to {a.out}")


def _cmd_eval(a: argparse.Namespace) -> None:
    from .api import evaluate

    result = evaluate(a.model, a.data, a.layout, weights=a.weights, labelset=a.labelset, limit=a.limit, out=a.out)
    print(json.dumps(result.to_dict(), indent=2) if a.json else result.table())


def _cmd_demo(a: argparse.Namespace) -> None:
    from .api import demo

    report = demo(a.out, model_id=a.model, weights=a.weights)
    print(f"{report['model']}: {len(report['images'])} sample photos segmented; outputs in {a.out} "
          f"(summary.json, predictions/)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgevit", description="EfficientViT models for devices, with measured fidelity.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered model ids")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*ade20k'")
    s.set_defaults(fn=_cmd_list)

    s = sub.add_parser("info", help="params, MACs, I/O contract and card of a model")
    s.add_argument("model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("predict", help="segment images: label PNGs, overlays, summary.json")
    s.add_argument("model")
    s.add_argument("images", nargs="+")
    s.add_argument("--weights", help="upstream checkpoint (.pt / .safetensors); random init if omitted")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_predict)

    s = sub.add_parser("eval", help="mIoU on a labelled dataset")
    s.add_argument("model")
    s.add_argument("--weights")
    s.add_argument("--data", required=True)
    s.add_argument("--layout", required=True, help="cityscapes | ade20k | voc | folder")
    s.add_argument("--labelset", help="evaluate a model fine-tuned on another label set, e.g. voc")
    s.add_argument("--limit", type=int, help="first N samples only")
    s.add_argument("--out", help="also write eval.json and eval.md here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("demo", help="the main job on bundled sample photos")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--model", default="efficientvit-seg-b1-ade20k")
    s.add_argument("--weights")
    s.set_defaults(fn=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except EdgevitError as exc:
        if args.debug:
            raise
        print(f"edgevit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgevit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: still one line, with a way to get the traceback
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"edgevit: internal error: {type(exc).__name__}: {first} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
