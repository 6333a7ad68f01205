"""``edgevit`` command line. Each sub-command calls one public function of :mod:`edgevit.api`;
failures print one line (``edgevit: error: ...``) and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cards import bundled_weights
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
    c = info["contract"]
    inp, outp = c["inputs"][0], c["outputs"][0]
    pub = info.get("published")

    def ref(key: str) -> str:
        return f"   (published {pub[key]}, {100 * info[key + '_vs_published']:+.2f}%)" if pub else ""

    print(f"{info['id']}  ({info['family']}, {c['task']}, {info['card']['origin']})")
    print(f"  params   {info['params'] / 1e6:.3f}M{ref('params')}")
    print(f"  MACs     {info['macs'] / 1e9:.2f}G at {'x'.join(map(str, info['macs_input'][2:]))}{ref('macs')}")
    print(f"  input    {inp['name']} {inp['dtype']} {inp['layout']} {inp['shape']}: {inp['description']}")
    if c["task"] == "super-resolution":
        t = c["tiling"]
        print(f"  output   {outp['name']} {outp['dtype']} {outp['layout']} {outp['shape']}: {outp['description']}")
        print(f"  tiling   {'x'.join(map(str, t['tile']))} input tiles, {t['margin']}px overlap, sizes padded to x{t['size_multiple']}")
        print(f"  cost     {info['card']['macs_per_output_megapixel']} MACs per output megapixel")
    else:
        print(f"  norm     mean {c['normalization']['mean']} std {c['normalization']['std']}")
        print(f"  resize   {c['resize']}")
        print(f"  output   {outp['name']} {outp['dtype']} {outp['layout']} {outp['shape']}")
        print(f"  labels   {c['labels']['name']} ({len(c['labels']['classes'])} classes, ignore {c['labels']['ignore_index']})")
    if pub:
        print(f"  card     published mIoU {pub['miou']} at {pub['resolution']}; "
              f"checkpoint {info['card']['upstream_checkpoint']}")
    elif info["card"]["origin"] == "design":
        print("  card     architecture defined here; no trained weights ship with it")
    else:
        print(f"  card     trained here: {info['card']['training'].get('summary', '')}")


def _cmd_predict(a: argparse.Namespace) -> None:
    from .api import predict

    summary = predict(a.model, a.images, a.out, weights=a.weights)
    print(f"wrote {2 * len(summary['images'])} images and summary.json to {a.out}")


def _cmd_eval(a: argparse.Namespace) -> None:
    from .api import evaluate

    result = evaluate(a.model, a.data, a.layout, weights=a.weights, labelset=a.labelset, limit=a.limit, out=a.out)
    print(json.dumps(result.to_dict(), indent=2) if a.json else result.table())


def _cmd_eval_sam(a: argparse.Namespace) -> None:
    from .sam.evaluate import evaluate_sam
    from .sam.export import load_sam_artifacts

    model = load_sam_artifacts(a.model, a.threads) if Path(a.model).is_dir() else a.model
    result = evaluate_sam(model, a.data, prompts=tuple(a.prompts.split(",")), weights=a.weights, limit=a.limit,
                          out=a.out)
    print(json.dumps(result.to_dict(), indent=2) if a.json else result.table())


def _cmd_demo(a: argparse.Namespace) -> None:
    from .api import demo

    report = demo(a.out, model_id=a.model, weights=a.weights, formats=tuple(a.formats.split(",")), runs=a.runs)
    print((Path(a.out) / "bench" / "bench.md").read_text(), end="")
    print(f"{report['model']}: {len(report['predictions'])} sample photos segmented (predictions/), "
          f"{len(report['bench']) - 1} artifacts exported and measured; report: {report['report']}")


def _export_gate(a: argparse.Namespace):
    """``--no-gate`` → None; segmentation budget flags → a segmentation Gate; otherwise the task's default."""
    if a.no_gate:
        return None
    if a.max_miou_drop is None and a.min_agreement is None:
        return "default"
    from .fidelity import Gate

    return Gate(1.0 if a.max_miou_drop is None else a.max_miou_drop,
                0.98 if a.min_agreement is None else a.min_agreement)


def _cmd_export_sam(a: argparse.Namespace) -> None:
    from .sam.export import MaskGate, export_sam

    gate = None if a.no_gate else ("default" if a.max_miou_drop is None else MaskGate(a.max_miou_drop))
    top = export_sam(a.model, a.format, a.precision, a.out, weights=a.weights, calib=a.calib, eval_data=a.eval_data,
                     eval_layout=a.eval_layout, gate=gate, keep_float=tuple(a.keep_float), threads=a.threads,
                     eval_limit=a.eval_limit, decoder_precision=a.decoder_precision, activations=a.activations,
                     ranges=a.ranges, placement=a.placement)
    c, f = top["components"], top["fidelity"]
    act = f" ({c['encoder']['activations']} activations)" if c["encoder"].get("activations") else ""
    print(f"{a.out}: encoder {top['format']}/{c['encoder']['precision']}{act} "
          f"{c['encoder']['size_bytes'] / 1e6:.2f} MB, "
          f"decoder {c['decoder']['precision']} {c['decoder']['size_bytes'] / 1e6:.2f} MB; {f['summary']}; "
          f"gate {f['gate_result']}")


def _cmd_export(a: argparse.Namespace) -> None:
    from .export import export
    from .models.registry import get_model_entry

    if getattr(get_model_entry(a.model).contract, "task", None) == "promptable-segmentation":
        return _cmd_export_sam(a)
    if a.activations != "static":
        raise EdgevitError(f"--activations {a.activations}: implemented for SAM exports so far; "
                           f"{a.model} exports with static int8 activations")
    m = export(a.model, a.format, a.precision, a.out, weights=a.weights, labelset=a.labelset, calib=a.calib,
               calib_layout=a.calib_layout, eval_data=a.eval_data, eval_layout=a.eval_layout,
               input_size=a.input_size, gate=_export_gate(a), keep_float=tuple(a.keep_float), threads=a.threads,
               ranges=a.ranges, placement=a.placement)
    f = m.fidelity or {}
    print(f"{a.out}: {m.format}/{m.precision} {m.size_bytes / 1e6:.2f} MB; {f.get('summary', '')}; "
          f"gate {f['gate_result']}")


def _cmd_trt_build(a: argparse.Namespace) -> None:
    from .lowering.tensorrt import build_engine

    print(build_engine(a.artifact, a.precision, a.cache_dir))


def _cmd_quant_report(a: argparse.Namespace) -> None:
    from .quantize.report import quant_report, render

    print(render(quant_report(a.model, a.calib, out=a.out, weights=a.weights, labelset=a.labelset,
                              calib_layout=a.calib_layout, input_size=a.input_size, threshold_db=a.threshold_db)))


def _cmd_bench(a: argparse.Namespace) -> None:
    from .harness.bench import bench

    bench(a.model, a.data, a.out, weights=a.weights, layout=a.layout, labelset=a.labelset,
                 formats=tuple(a.formats.split(",")), precisions=tuple(a.precisions.split(",")),
                 input_size=a.input_size, threads=a.threads, runs=a.runs, limit=a.limit, reuse=not a.no_reuse)
    print((Path(a.out) / "bench.md").read_text(), end="")


def _cmd_finetune(a: argparse.Namespace) -> None:
    from .train.finetune import finetune

    args = {k: v for k, v in vars(a).items() if k not in ("fn", "command", "debug")}
    args["scale"] = tuple(args["scale"])
    report = finetune(**args)
    ev = report["eval"]
    print(f"{a.out}: {report['steps']} steps, final loss {report['final_loss']:.3f}; train mIoU "
          f"{100 * ev['train']['miou']:.2f}" + (f", held-out mIoU {100 * ev['holdout']['miou']:.2f}"
                                                 if ev.get("holdout") else ""))


def _cmd_eval_sr(a: argparse.Namespace) -> None:
    from .sr.evaluate import eval_sr

    for result in eval_sr(a.model, a.data, a.scale, weights=a.weights, out=a.out):
        print(result.table())


def _cmd_train_sr(a: argparse.Namespace) -> None:
    from .train.train_sr import train_sr

    report = train_sr(**{k: v for k, v in vars(a).items() if k not in ("fn", "command", "debug")})
    ev = report["eval"]
    print(f"{a.out}: {report['steps']} steps in {report['wall_seconds']:.0f} s, final L1 {report['final_loss']:.4f}"
          + (f"; PSNR-Y {ev['psnr_y']:.2f} dB, SSIM-Y {ev['ssim_y']:.4f} on {ev['dataset']}" if ev else ""))


def _cmd_generate(a: argparse.Namespace) -> None:
    from .hart.generate import generate_images

    for path in generate_images(a.out, a.class_, a.artifacts, a.model, a.seed, a.count, a.cfg, progress=False,
                                prompt=a.prompt, text_encoder=a.text_encoder):
        print(path)


def _cmd_export_hart(a: argparse.Namespace) -> None:
    from .hart.export import export_hart
    from .hart.sampler import SamplerSettings

    top = export_hart(a.checkpoint, a.format, a.out, a.precision, SamplerSettings(cfg=a.cfg),
                      gate=None if a.no_gate else "default")
    print(f"{a.out}: {top['fidelity']['summary']} ({top['fidelity']['gate_result']})")


def _cmd_distill_hart(a: argparse.Namespace) -> None:
    from .hart.distill import distill_hart

    print(distill_hart(a.teacher, a.student, a.data, a.out, a.steps, batch=a.batch, lr=a.lr, temperature=a.temperature,
                       hidden_weight=a.hidden_weight, seed=a.seed, guidance=a.guidance))


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

    s = sub.add_parser("eval-sam", help="interactive segmentation mIoU of a SAM model (box and click prompts)")
    s.add_argument("model", help="a SAM model id, e.g. efficientvit-sam-l0, or a SAM artifact folder from export")
    s.add_argument("--threads", type=int, help="artifact runners' threads")
    s.add_argument("--weights", help="upstream checkpoint (.pt / .safetensors); random init if omitted")
    s.add_argument("--data", required=True, help="folder with prompts.json (grabcut50) or images/ + masks/<image>/")
    s.add_argument("--prompts", default="box,click1,click3,click5", help="comma-separated: box, click1..click15")
    s.add_argument("--limit", type=int, help="first N instances only")
    s.add_argument("--out", help="also write eval_sam.json and eval_sam.md here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_eval_sam)

    s = sub.add_parser("export", help="lower a model to an artifact + manifest, gated on measured fidelity")
    s.add_argument("model")
    s.add_argument("--format", required=True, help="pte | tflite | onnx")
    s.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8")
    s.add_argument("--weights")
    s.add_argument("--labelset")
    s.add_argument("--calib", help="folder of real photos for int8 calibration (and fidelity)")
    s.add_argument("--calib-layout", help="read --calib as a labelled dataset: cityscapes | ade20k | voc | folder")
    s.add_argument("--eval-data", help="labelled images for the gate (default: the calibration images)")
    s.add_argument("--eval-layout")
    s.add_argument("--input-size", help="HxW of the artifact's static input, e.g. 512x1024")
    s.add_argument("--keep-float", action="append", default=[], help="module name to leave in float (repeatable)")
    s.add_argument("--max-miou-drop", type=float, help="segmentation gate: mIoU drop budget, points (default 1.0); "
                   "SAM: mask mIoU vs float drop budget")
    s.add_argument("--eval-limit", type=int, default=8, help="SAM: eval instances the gate measures (default 8)")
    s.add_argument("--decoder-precision", default="fp32", help="SAM: prompt decoder precision (fp32 | int8, gated)")
    s.add_argument("--activations", default="static", choices=("static", "dynamic"),
                   help="int8 activations: static (calibrated ranges) | dynamic (run-time ranges at conv/linear "
                        "inputs, float between; SAM: .pte encoder/decoder, .tflite encoder)")
    s.add_argument("--ranges", help="static int8 activation ranges from the calibration images: minmax | percentile "
                   "(99.99th percentile of |x|); ONNX only; default: the task's measured choice (segmentation: "
                   "percentile, others: minmax)")
    s.add_argument("--placement", help="where static int8 quantizes: weighted (convs and matmuls/linears only; "
                   "adds, multiplies, concatenations float) | all (every op the quantizer can); pte and onnx; default: "
                   "the format's (onnx weighted, pte all; SAM encoders weighted)")
    s.add_argument("--min-agreement", type=float, help="segmentation gate: pixel agreement with float (default 0.98)")
    s.add_argument("--no-gate", action="store_true", help="write the artifact even if it misses the budget")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", required=True, help="artifact folder (artifact + manifest.json)")
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser("trt-build", help="build and cache a TensorRT engine from an ONNX artifact")
    s.add_argument("artifact", help="ONNX artifact folder")
    s.add_argument("--precision", default="fp16", help="fp16 | int8 (int8 needs the QDQ ONNX)")
    s.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "edgevit" / "trt"))
    s.set_defaults(fn=_cmd_trt_build)

    s = sub.add_parser("quant-report", help="per-layer int8 sensitivity and which layers to keep float")
    s.add_argument("model")
    s.add_argument("--calib", required=True)
    s.add_argument("--calib-layout")
    s.add_argument("--weights")
    s.add_argument("--labelset")
    s.add_argument("--input-size")
    s.add_argument("--threshold-db", type=float, default=30.0)
    s.add_argument("--out")
    s.set_defaults(fn=_cmd_quant_report)

    s = sub.add_parser("bench", help="export every format/precision and report size, accuracy, latency")
    s.add_argument("model")
    s.add_argument("--data", required=True, help="real images (calibration and accuracy)")
    s.add_argument("--layout", help="read --data as a labelled dataset")
    s.add_argument("--weights")
    s.add_argument("--labelset")
    s.add_argument("--formats", default="pte,tflite,onnx")
    s.add_argument("--precisions", default="fp32,int8")
    s.add_argument("--input-size")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--runs", type=int, default=20)
    s.add_argument("--limit", type=int)
    s.add_argument("--no-reuse", action="store_true", help="re-export even if a matching artifact exists")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_bench)

    s = sub.add_parser("finetune", help="fine-tune a model on a labelled dataset (AdamW + cosine), resumable")
    from .train.finetune import add_arguments

    add_arguments(s)
    s.set_defaults(fn=_cmd_finetune)

    s = sub.add_parser("eval-sr", help="super-resolution PSNR/SSIM on Y (bicubic floor row first)")
    s.add_argument("model", help="SR model id, or 'bicubic'")
    s.add_argument("--weights", help="trained weights (.safetensors / .pt); random init if omitted")
    s.add_argument("--data", required=True, help="SR dataset folder (HR/ and optionally LR_bicubic/X2, X4)")
    s.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    s.add_argument("--out", help="also write eval_sr.json and eval_sr.md here")
    s.set_defaults(fn=_cmd_eval_sr)

    s = sub.add_parser("train-sr", help="train a super-resolution model (L1, AdamW + cosine), resumable")
    from .train.train_sr import add_arguments as add_sr_arguments

    add_sr_arguments(s)
    s.set_defaults(fn=_cmd_train_sr)

    s = sub.add_parser("generate", help="HART: images (PNGs) of a class or a prompt from exported programs or a checkpoint")
    s.add_argument("--artifacts", help="folder written by export-hart")
    s.add_argument("--model", help="HART checkpoint folder (llm/ + tokenizer/), run eagerly")
    s.add_argument("--class", dest="class_", type=int, help="class label (class-conditional models)")
    s.add_argument("--prompt", help="text prompt (text-conditioned models; needs --text-encoder)")
    s.add_argument("--text-encoder", help="KIND:PATH: hf:FOLDER (local transformers model) or npz:FILE (precomputed)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--cfg", type=float, help="guidance scale (default: the exported setting)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_generate)

    s = sub.add_parser("export-hart", help="HART: transformer steps, diffusion MLP and decoder as gated programs")
    s.add_argument("checkpoint", help="HART checkpoint folder (llm/ + tokenizer/)")
    s.add_argument("--format", required=True, choices=("pte", "tflite", "onnx"))
    s.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="of the diffusion MLP and decoder")
    s.add_argument("--cfg", type=float, default=1.5)
    s.add_argument("--no-gate", action="store_true")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_cmd_export_hart)

    s = sub.add_parser("distill-hart", help="HART: teacher-forced distillation of a student config, resumable")
    s.add_argument("--teacher", required=True, help="teacher checkpoint folder (llm/ + tokenizer/)")
    s.add_argument("--student", required=True, help="student config name (e.g. hart-student-phone)")
    s.add_argument("--data", default="skimage", help="'skimage' (bundled photo crops) or a folder of photos")
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int, default=2000)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--temperature", type=float, default=2.0)
    s.add_argument("--hidden-weight", type=float, default=0.0, help="weight of hidden-state matching (0 = off)")
    s.add_argument("--guidance", type=float, default=0.0,
                   help="distill classifier-free guidance at this scale into the student (0 = off; the student "
                        "then samples with one branch)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_distill_hart)

    s = sub.add_parser("demo", help="the main job: trained model, sample photos, every format, the report")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--model", default="efficientvit-seg-b0-voc")
    s.add_argument("--weights", default=str(bundled_weights("efficientvit-seg-b0-voc")))
    s.add_argument("--formats", default="pte,tflite,onnx")
    s.add_argument("--runs", type=int, default=10)
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
