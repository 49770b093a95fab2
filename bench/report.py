"""The bench's tables: every figure as a ratio against the upstream measured in the same run."""

from __future__ import annotations

import argparse
from typing import Any

# The chatstream servers the table has a row for, in the order it prints them.
SERVER_TARGETS = (
    "chatstream",
    "nometrics",
    "workers",
    "websocket",
    "aisdk",
    "v1",
    "responses",
    "relay",
)

COLUMNS = (
    ("streams", 7),
    ("server", -10),
    ("tokens/s", 9),
    ("vs direct", 9),
    ("TTFT+p50", 9),
    ("TTFT+p99", 9),
    ("CPU-s/1k", 9),
    ("vs upstream", 11),
    ("RSS MB", 7),
    ("fail", 5),
)
LEGEND = """
tokens/s: delivered to clients in the window; vs direct: ratio to the upstream served directly.
TTFT+: time to first token added over talking to the upstream directly (ms).
CPU-s/1k: the server's CPU-seconds per 1,000 relayed tokens (workers: the parent's
and its workers', Redis's own not counted); vs upstream: ratio to the fake upstream's
own CPU-seconds per 1,000 tokens it generated, in the direct run."""


def _cell(value: object) -> str:
    if not isinstance(value, float):
        return str(value)
    if abs(value) < 1:
        return f"{value:.4f}"
    if abs(value) < 10:
        return f"{value:.2f}"
    return f"{value:.0f}"


def _row(*cells: object) -> str:
    out = []
    for (_, width), cell in zip(COLUMNS, cells, strict=True):
        text = _cell(cell)
        out.append(text.ljust(-width) if width < 0 else text.rjust(width))
    return "  ".join(out)


def report(results: dict[int, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = [
        f"streams of {args.tokens} tokens at {args.interval_ms:g} ms/token "
        f"({1000 / args.interval_ms:.0f} tokens/s each); window {args.window:g} s",
        "",
        _row(*(name for name, _ in COLUMNS)),
    ]
    for users, by_target in results.items():
        direct = by_target["direct"]
        upstream_cpu = direct["upstream_cpu_per_1k_tokens"]
        lines.append(
            _row(users, "upstream", direct["tokens_per_s"], "1.00", "0", "0", upstream_cpu, "1.00",
                 direct["upstream_rss_mb"], direct["failures"])
        )  # fmt: skip
        for name in SERVER_TARGETS:
            row = by_target.get(name)
            if row is None:
                continue
            server_cpu = row[f"{name}_cpu_per_1k_tokens"]
            throughput = row["tokens_per_s"] / direct["tokens_per_s"]
            lines.append(
                _row("", name, row["tokens_per_s"], f"{throughput:.2f}",
                     f"{row['ttft_p50_ms'] - direct['ttft_p50_ms']:.1f}",
                     f"{row['ttft_p99_ms'] - direct['ttft_p99_ms']:.1f}",
                     server_cpu, f"{server_cpu / upstream_cpu:.2f}", row[f"{name}_rss_mb"],
                     row["failures"])
            )  # fmt: skip
        on, off = by_target.get("chatstream"), by_target.get("nometrics")
        if on is not None and off is not None:
            cost = on["chatstream_cpu_per_1k_tokens"] / off["nometrics_cpu_per_1k_tokens"] - 1
            lines.append(f"{'':>7}  metrics cost at {users} streams: {cost:+.1%} CPU per token")
    return "\n".join(lines) + "\n" + LEGEND


GOALS = (
    ("TTFT added p50 / p99, sequential streams (ms)", "<= 2 / <= 5"),
    ("tokens/s at 1000 streams x 50 tokens/s, vs direct", ">= 0.60"),
    ("CPU per token at 1000 streams (us)", "<= 50"),
    ("CPU-s per 1,000 tokens, bursty (50 x 500 tokens)", "<= 0.015"),
    ("peak RSS at 1000 streams (MB)", "<= 150"),
)


def goals_report(
    results: dict[int, dict[str, dict[str, Any]]], extra: dict[str, dict[str, dict[str, Any]]]
) -> str:
    """The figures the performance goals are stated in, measured in this same run."""
    measured: list[str] = []
    sequential = extra.get("sequential")
    if sequential is not None:
        direct, ours = sequential["direct"], sequential["chatstream"]
        measured.append(
            f"{ours['ttft_p50_ms'] - direct['ttft_p50_ms']:.1f} / "
            f"{ours['ttft_p99_ms'] - direct['ttft_p99_ms']:.1f}"
        )
    else:
        measured.append("-")
    busy = results.get(1000)
    if busy is not None and "chatstream" in busy:
        ours = busy["chatstream"]
        measured.append(f"{ours['tokens_per_s'] / busy['direct']['tokens_per_s']:.2f}")
        measured.append(f"{ours['chatstream_cpu_per_1k_tokens'] * 1000:.0f}")
    else:
        measured += ["-", "-"]
    bursty = extra.get("bursty")
    measured.append(
        f"{bursty['chatstream']['chatstream_cpu_per_1k_tokens']:.4f}" if bursty else "-"
    )
    measured.append(
        f"{busy['chatstream']['chatstream_peak_rss_mb']:.0f}"
        if busy is not None and "chatstream" in busy
        else "-"
    )
    width = max(len(name) for name, _ in GOALS)
    lines = ["", "", "performance goals (one core), measured in this run:", ""]
    lines.append(f"{'figure':<{width}}  {'measured':>13}  goal")
    for (name, goal), value in zip(GOALS, measured, strict=True):
        lines.append(f"{name:<{width}}  {value:>13}  {goal}")
    return "\n".join(lines)
