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
        f"| end to end, saturated ({report['best_config']}"
        f"{', as `make run`' if report.get('as_make_run', True) else ''}) | {saturation:.0f} "
        f"| {saturation / ceiling:.0%} | {saturation / ORIGINAL_RPS:.0f}x |",
        "",
        f"Model CPU per image as the consumers run it ({model['consumer_threads']} thread"
        f"{'s' if model['consumer_threads'] > 1 else ''}): "
        + ", ".join(f"{v:.1f} ms at batch {b}" for b, v in model["model_cpu_ms_per_image"].items())
        + f"; preprocessing {model['preprocess_ms_per_image']:.2f} ms per image on top, counted in the "
        "consumers' share below.",
        "Model-only images/s by batch size: "
        + ", ".join(f"batch {b}: {v['images_per_s']:.0f}" for b, v in model["batch_sizes"].items())
        + ".",
        f"Broker start: {report['broker_start_s']:.1f} s; system start to ready (broker up, model cached): "
        f"{report['ready_s']:.1f} s.",
        "",
        *_budget(report),
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
    lines += ["", "![CPU per image by process and offered load](pipeline-cpu.png)"]
    lines += [
        "",
        f"## Scaling on this machine (sustained throughput: {report.get('saturating_users', 8)} users each "
        "keeping 4 images in flight)",
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
    lines += _clients(report)
    lines += _profiled(report)
    return "\n".join(lines) + "\n"


def model_ms_per_image(report: dict[str, Any]) -> float:
    """The model's own CPU per image as a saturated consumer runs it (its threads, its largest batch)."""
    by_batch = report["model"]["model_cpu_ms_per_image"]
    return float(by_batch[max(by_batch, key=int)])


def busiest_level(report: dict[str, Any]) -> dict[str, Any]:
    """The sweep level that completed the most images per second: the system at its fullest."""
    return max(report["sweep"], key=lambda lv: lv["completed_images_per_s"])


def _budget(report: dict[str, Any]) -> list[str]:
    """The issue's CPU budget: everything but the model may cost at most 2/3 of what the model costs."""
    level = busiest_level(report)
    cpu = {k: v * 1000 for k, v in level["cpu_s_per_image"].items() if v is not None}
    model = model_ms_per_image(report)
    pipeline = sum(v for k, v in cpu.items() if k != "load generator")
    everything = sum(cpu.values())
    return [
        f"Highest completed rate in the open-loop sweep: {level['completed_images_per_s']:.0f} img/s "
        f"({level['completed_images_per_s'] / report['model']['ceiling_images_per_s']:.0%} of the ceiling) "
        f"at {level['offered_images_per_s']:.0f} offered. There, the model's own share of the CPU was "
        f"{model:.1f} ms per image; the whole system spent {pipeline:.1f} ms per image, plus "
        f"{cpu.get('load generator', 0):.1f} ms in the load generator. Everything but the model (preprocessing, "
        f"Kafka clients, HTTP, broker, sink) cost {(pipeline - model) / model:.2f}x the model "
        f"({(everything - model) / model:.2f}x with the load generator); the target allows 0.54x (65% of the "
        "ceiling).",
    ]


def _clients(report: dict[str, Any]) -> list[str]:
    """Saturation with each Kafka client library and guarantee, the rest as `make run`, and the ratios."""
    levels = report.get("clients")
    if not levels:
        return []
    names = ("api", "inference-1", "inference-2", "sink", "broker", "load generator")
    lines = [
        f"## Kafka client libraries and processing guarantees (KAFKA_CLIENT, PROCESSING_GUARANTEE; "
        f"{report['best_config']}, saturated by {report.get('saturating_users', 8)} closed-loop users, in the "
        "order run)",
        "",
        "| client | guarantee | completed img/s | vs ceiling | p50 ms | p99 ms | "
        + " | ".join(f"{n} CPU ms/img" for n in names)
        + " | all but model and load gen |",
        "|---" * (len(names) + 7) + "|",
    ]
    model_ms = model_ms_per_image(report)
    for level in levels:
        cpu = level["cpu_s_per_image"]
        cells = [_f(cpu[n] * 1000 if cpu.get(n) is not None else None, 2) for n in names]
        system = sum(v for k, v in cpu.items() if v is not None and k != "load generator") * 1000
        rt = level["round_trip_ms"]
        lines.append(
            f"| {level['kafka_client']} | {level.get('processing_guarantee', 'exactly-once')} | "
            f"{level['completed_images_per_s']:.1f} | "
            f"{level['completed_images_per_s'] / report['model']['ceiling_images_per_s']:.0%} | "
            f"{_f(rt['p50'])} | {_f(rt['p99'])} | " + " | ".join(cells) + f" | {_f(system - model_ms, 2)} |"
        )
    rate = {
        (lv["kafka_client"], lv.get("processing_guarantee", "exactly-once")): lv["completed_images_per_s"]
        for lv in levels
    }
    ratios = [
        f"exactly-once / at-least-once with {client}: "
        f"**{rate[(client, 'exactly-once')] / rate[(client, 'at-least-once')]:.2f}**"
        for client in ("kafka-python", "confluent-kafka")
        if rate.get((client, "exactly-once")) and rate.get((client, "at-least-once"))
    ]
    return [*lines, "", *(f"- {r}" for r in ratios), *([""] if ratios else [])]


def _profiled(report: dict[str, Any]) -> list[str]:
    level = report.get("profiled_level")
    if not level:
        return []
    rt = level["round_trip_ms"]
    lines = [
        "## Profiles",
        "",
        f"A separate level at saturation ({level['offered_images_per_s']:.0f} img/s offered; completed "
        f"{level['completed_images_per_s']:.1f} img/s, p50 {_f(rt['p50'])} ms, with the profilers taking CPU, "
        "so not in the tables above): py-spy flame graphs of "
        "[the API](profiles/api.svg), [a consumer](profiles/inference-1.svg), [the sink](profiles/sink.svg) "
        "and [the load generator](profiles/load-generator.svg)",
    ]
    if report.get("broker_profile"):
        lines[-1] += ", and [the broker's Java Flight Recorder samples](profiles/broker.txt):"
        lines += ["", "```", *report["broker_profile"].splitlines()[:18], "```"]
    else:
        lines[-1] += "."
    return [*lines, ""]


def _cpu_table(report: dict[str, Any]) -> list[str]:
    model_ms = model_ms_per_image(report)
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
    _plot_cpu(report, output, plt)


def _plot_cpu(report: dict[str, Any], output: Path, plt: Any) -> None:
    """pipeline-cpu.png: CPU-seconds per image of each process at each sweep level, against the model's own."""
    sweep = report["sweep"]
    names = sorted({n for level in sweep for n in level["cpu_s_per_image"]})
    labels = [f"{lv['offered_images_per_s']:.0f}" for lv in sweep]
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    bottom = [0.0] * len(sweep)
    for name in names:
        values = [(lv["cpu_s_per_image"].get(name) or 0.0) * 1000 for lv in sweep]
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    model = model_ms_per_image(report)
    ax.axhline(model, color="black", linestyle="--", label="the model alone")
    ax.axhline(model * 5 / 3, color="red", linestyle=":", label="target: model + 2/3")
    ax.set(xlabel="offered images/s", ylabel="CPU ms per image", title="Where the CPU goes, per image")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(output / "pipeline-cpu.png", dpi=110)
    plt.close(fig)
