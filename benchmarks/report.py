"""The pipeline benchmark's report: Markdown tables and matplotlib plots from the JSON results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORIGINAL_RPS = 5.8  # the original Flask + Redis project, one model service (its README)
HOPS = ("api", "queue", "inference", "sink", "sse")


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The whole results page."""
    m, model = report["machine"], report["model"]
    ceiling = model["ceiling_images_per_s"]
    after = report.get("model_after", {}).get("ceiling_images_per_s")
    saturation = report["saturation_images_per_s"]
    lines = [
        "# Pipeline benchmark" + (" (smoke run)" if report.get("smoke") else ""),
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, Python {m['python']}, by `make bench` "
        f"(`python -m benchmarks.pipeline_bench`). Load levels of {report['level_seconds']:.0f} s each; "
        "everything below (model ceiling included) was measured in the same run, on the same machine, with the "
        "broker, the services and the load generator sharing its cores.",
        "",
        "## Headline",
        "",
        "| | images/s | vs the model-only ceiling | vs the original project (5.8 req/s) |",
        "|---|---|---|---|",
        f"| model-only ceiling ({model['runtime']}, {model['threads']} threads, batch {model['best_batch_size']}) "
        f"| {ceiling:.0f} (again after the run: {_f(after, 0)}) | 100% | |",
        f"| end to end, saturated ({report['best_config']}, as `make run`) | {saturation:.0f} "
        f"| {saturation / ceiling:.0%} | {saturation / ORIGINAL_RPS:.0f}x |",
        "",
        f"Model CPU per image: {model['model_cpu_s_per_image'] * 1000:.1f} ms (batch 1); preprocessing "
        f"{model['preprocess_ms_per_image']:.2f} ms per image on top, counted in the consumers' share below.",
        "Model-only images/s by batch size: "
        + ", ".join(f"batch {b}: {v['images_per_s']:.0f}" for b, v in model["batch_sizes"].items())
        + ".",
        f"Broker start: {report['broker_start_s']:.1f} s; system start to ready (broker up, model cached): "
        f"{report['ready_s']:.1f} s.",
        "",
        "## Load sweep (upload sent to result received by SSE)",
        "",
        "| offered img/s | completed img/s | p50 ms | p95 ms | p99 ms | max ms | shed (429/503) | errors | timed out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in report["sweep"]:
        rt = level["round_trip_ms"]
        lines.append(
            f"| {level['offered_images_per_s']:.0f} ({level['fraction_of_saturation']:.2g}x) "
            f"| {level['completed_images_per_s']:.1f} | {_f(rt['p50'])} | {_f(rt['p95'])} | {_f(rt['p99'])} "
            f"| {_f(rt['max'])} | {level['rejected']} | {level['errors']} | {level['timed_out']} |"
        )
    lines += [
        "",
        "### Per hop (p50 / p99 ms)",
        "",
        "| offered img/s | " + " | ".join(HOPS) + " |",
        "|---" * (len(HOPS) + 1) + "|",
    ]
    for level in report["sweep"]:
        hops = level["hops_ms"]
        cells = [f"{_f(hops[h]['p50'])} / {_f(hops[h]['p99'])}" if h in hops else "-" for h in HOPS]
        lines.append(f"| {level['offered_images_per_s']:.0f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Hops: *api* upload sent to 202 received (validation, publish, broker ack); *queue* API receipt to a "
        "consumer's poll; *inference* poll to prediction (the whole batch's preprocessing and model time); "
        "*sink* prediction to stored; *sse* stored to received by the client.",
        "",
        "## Where the CPU goes (CPU-seconds per image, ms)",
        "",
    ]
    lines += _cpu_table(report)
    lines += [
        "",
        "## Scaling on this machine (sustained throughput: 8 users each keeping 4 images in flight)",
        "",
        "| configuration | completed img/s | vs ceiling | p50 ms | peak RSS per consumer MB |",
        "|---|---|---|---|---|",
    ]
    for level in report["scaling"]:
        rss = [v for k, v in level["peak_rss_mb"].items() if k.startswith("inference")]
        lines.append(
            f"| {level['config']} | {level['completed_images_per_s']:.1f} | "
            f"{level['completed_images_per_s'] / ceiling:.0%} | {_f(level['round_trip_ms']['p50'])} | "
            f"{_f(max(rss, default=None), 0)} |"
        )
    lines += ["", "![throughput and latency by offered load](pipeline.png)", ""]
    return "\n".join(lines) + "\n"


def _cpu_table(report: dict[str, Any]) -> list[str]:
    model_ms = report["model"]["model_cpu_s_per_image"] * 1000
    names = sorted({n for level in report["sweep"] for n in level["cpu_s_per_image"]})
    rows = [
        "| offered img/s | " + " | ".join(names) + " | all but load gen | model alone |",
        "|---" * (len(names) + 3) + "|",
    ]
    for level in report["sweep"]:
        cpu = level["cpu_s_per_image"]
        system = sum(v for k, v in cpu.items() if v is not None and k != "load generator")
        cells = [_f(cpu[n] * 1000 if cpu.get(n) is not None else None, 2) for n in names]
        rows.append(
            f"| {level['offered_images_per_s']:.0f} | "
            + " | ".join(cells)
            + f" | {system * 1000:.2f} | {model_ms:.2f} |"
        )
    return rows


def render_plots(report: dict[str, Any], output: Path) -> None:
    """pipeline.png: completed vs offered throughput, and latency percentiles vs offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    offered = [lv["offered_images_per_s"] for lv in sweep]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(offered, [lv["completed_images_per_s"] for lv in sweep], "o-", label="completed")
    left.plot(offered, offered, ":", color="grey", label="offered")
    left.axhline(
        report["model"]["ceiling_images_per_s"], color="red", linestyle="--", label="model-only ceiling"
    )
    left.set(xlabel="offered images/s", ylabel="images/s", title="Throughput")
    left.legend()
    for q in ("p50", "p95", "p99"):
        right.plot(offered, [lv["round_trip_ms"][q] or float("nan") for lv in sweep], "o-", label=q)
    right.set(xlabel="offered images/s", ylabel="ms", title="Round trip (upload to SSE result)", yscale="log")
    right.legend()
    fig.suptitle(f"{report['best_config']}, {report['machine']['cores']} cores, {report['machine']['date']}")
    fig.tight_layout()
    fig.savefig(output / "pipeline.png", dpi=110)
    plt.close(fig)
