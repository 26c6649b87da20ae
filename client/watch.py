"""python -m client watch: live statistics and alerts from the monitoring model.

  python -m client watch --url 127.0.0.1:8001 --duration 600 --interval 10

Opens one gRPC stream to the decoupled ``monitoring`` model, subscribes to its alerts
(printed as they arrive) and asks for statistics every --interval seconds. Stops by
itself after --duration seconds (or on Ctrl-C). HTTP cannot carry a decoupled stream,
so this is gRPC only.
"""

from __future__ import annotations

import json
import queue
import sys
import time

import numpy as np

from bls.contract.tensors import MONITORING_INPUTS, MONITORING_NAME, MONITORING_OUTPUT

COMMAND = next(spec for spec in MONITORING_INPUTS if spec.name == "command")


def stats_line(stats: dict) -> str:
    """Render what matters in a 'stats' message as one line."""
    classes = ", ".join(f"{name} {count}" for name, count in
                        list(stats.get("detections_per_class", {}).items())[:5]) or "none"
    latency = stats.get("latency_ms", {})
    parts = [f"events {stats['events']} (dropped {stats['dropped']})",
             f"top classes: {classes}",
             (f"latency p50 {latency['p50']:.0f} ms p99 {latency['p99']:.0f} ms"
              if latency.get("count") else "latency -"),
             "psi " + (" ".join(f"{k} {v:.3f}" for k, v in stats.get("drift_psi", {}).items())
                       or "- (reference not full yet)"),
             f"alerts {stats['alerts']}"]
    if "capture" in stats:
        capture = stats["capture"]
        parts.append(f"captured {capture['files']} files, {capture['bytes'] / 1e6:.1f} of "
                     f"{capture['max_bytes'] / 1e6:.1f} MB")
    return " | ".join(parts)


def alert_line(alert: dict) -> str:
    """Render an 'alert' message as one line."""
    return (f"ALERT {alert.get('kind')}: psi {alert.get('psi')} > {alert.get('threshold')} "
            f"after {alert.get('events')} events")


def watch(url: str, duration_s: float, interval_s: float, max_alerts: int = 1000,
          out=sys.stdout) -> int:
    """Stream alerts and periodic statistics for ``duration_s``; return the number of
    alerts seen.

    Args:
        url: the server's gRPC HOST:PORT.
        duration_s: how long to watch.
        interval_s: seconds between statistics.
        max_alerts: the subscription ends after this many alerts.
        out: where the lines go.

    Raises:
        ConnectionError: the server or the model cannot be reached.
    """
    import tritonclient.grpc as grpcclient

    messages: queue.Queue = queue.Queue()

    def on_response(result, error):
        if error is not None:
            messages.put({"type": "error", "message": error.message()})
        else:
            messages.put(json.loads(result.as_numpy(MONITORING_OUTPUT.name)[0]))

    def command(client, text: str, parameters: dict | None = None) -> None:
        tensor = grpcclient.InferInput(COMMAND.name, [1], COMMAND.dtype)
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
        client.async_stream_infer(MONITORING_NAME, [tensor], parameters=parameters)

    alerts = 0
    with grpcclient.InferenceServerClient(url) as client:
        try:
            ready = client.is_model_ready(MONITORING_NAME)
        except Exception as e:
            raise ConnectionError(f"cannot reach {url}: {e}") from e
        if not ready:
            raise ConnectionError(f"model '{MONITORING_NAME}' is not ready at {url}")
        client.start_stream(callback=on_response)
        try:
            command(client, "subscribe", {"duration_s": duration_s, "max_alerts": max_alerts})
            end = time.monotonic() + duration_s
            next_stats = time.monotonic()
            while time.monotonic() < end:
                if time.monotonic() >= next_stats:
                    command(client, "stats")
                    next_stats += interval_s
                try:
                    message = messages.get(timeout=max(0.05, min(next_stats, end) - time.monotonic()))
                except queue.Empty:
                    continue
                kind = message.get("type")
                stamp = time.strftime("%H:%M:%S")
                if kind == "stats":
                    print(f"{stamp} {stats_line(message)}", file=out, flush=True)
                elif kind == "alert":
                    alerts += 1
                    print(f"{stamp} {alert_line(message)}", file=out, flush=True)
                elif kind == "error":
                    print(f"{stamp} error: {message['message']}", file=out, flush=True)
                elif kind == "end":
                    print(f"{stamp} subscription ended: {message.get('reason')}", file=out,
                          flush=True)
                    break
        finally:
            client.stop_stream()
    return alerts
