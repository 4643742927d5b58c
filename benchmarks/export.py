"""What leaves the tool: size on disk of each export format, and prune + int8 side by side.

Per bundled model and two plans (structured ``filters`` 50%, unstructured magnitude 70%):

1. every deployable format (``pt2``, ``onnx``, ``int8``) written by ``explorer.keep.export``: bytes
   on disk next to the dense fp32 state_dict, and the largest |output difference| of the file
   reloaded against the in-app pruned model on 64 eval images (the round trip);
2. ``int8_report``: eval accuracy of dense, pruned fp32 and pruned int8, bytes, the combined
   reduction (dense fp32 / pruned int8) and latency at batch 32 of pruned fp32 and int8, timed in
   the same interleaved rounds as dense.

Benchmarks print figures; they never assert.

    .venv/bin/python benchmarks/export.py [--models lenet5 resnet_mini] [--repeats 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.keep.export import FORMATS, OnnxRunner, export
from explorer.keep.quantize import int8_report, pruned_fp32, saved_bytes

PLANS = {
    "filters 50%": PruningPlan(method="filters", amount=0.5),
    "magnitude 70%": PruningPlan(amount=0.7),
}
DEPLOYABLE = ("pt2", "onnx", "int8")


def _reloaded_output(fmt: str, path: Path, images: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        return OnnxRunner(path)(images)
    with torch.inference_mode():
        return torch.export.load(path).module()(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["lenet300", "lenet5", "resnet_mini", "vit_tiny"]
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    header = (
        "| model | plan | dense fp32 | pt2 | onnx | int8 | max |Δ| reloaded | accuracy dense / "
        "fp32 / int8 | combined | ms b32 dense / fp32 / int8 |"
    )
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        bench = open_workbench(name)
        images = bench.eval_set.images[:64]
        dense_bytes = saved_bytes({k: v.cpu() for k, v in bench.model.state_dict().items()})
        for label, plan in PLANS.items():
            if FORMATS["pt2"].unavailable_because(plan.method):
                continue
            try:
                bench.resolve(plan)
            except ValueError as err:  # a model without units of this method
                print(f"| {name} | {label} | skipped: {err} |")
                continue
            fp32, _ = pruned_fp32(bench, plan)
            with torch.inference_mode():
                expected = fp32(images)
            sizes, worst = {}, 0.0
            with tempfile.TemporaryDirectory() as folder:
                for fmt in DEPLOYABLE:
                    result = export(bench, plan, fmt, Path(folder) / f"m{FORMATS[fmt].suffix}")
                    sizes[fmt] = result.bytes
                    if fmt != "int8":  # int8 is compared to fp32 through accuracy below
                        got = _reloaded_output(fmt, Path(result.path), images)
                        worst = max(worst, float((got - expected).abs().max()))
            report = int8_report(bench, plan, batch_sizes=(32,), repeats=args.repeats)
            ms = {row["model"]: row["median_ms"] for row in report.latency}
            print(
                f"| {name} | {label} | {dense_bytes / 1024:,.0f} KiB "
                + " ".join(f"| {sizes[f] / 1024:,.0f} KiB" for f in DEPLOYABLE)
                + f" | {worst:.1e} | {report.dense_accuracy:.2%} / {report.fp32_accuracy:.2%} / "
                f"{report.int8_accuracy:.2%} | {report.combined_reduction:.1f}× | "
                f"{ms['dense']:.2f} / {ms[report.form]:.2f} / {ms['int8']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
