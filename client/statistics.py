"""Read Triton's statistics extension (HTTP ``/v2/models/stats``, gRPC ``ModelStatistics``):
what each model has handled since it loaded and where its time went, and the difference
between two readings. The sibling of client/metrics.py, which reads the Prometheus port.

Triton 2.51 counts a Python model's per-request error response as a success, so requests
handled = success + fail.
"""

from __future__ import annotations

from collections import Counter


def per_model(reply: dict) -> dict[str, Counter]:
    """Sum a statistics reply by model, over its versions.

    Args:
        reply: as JSON: the HTTP client's, or the gRPC client's with ``as_json=True``
            (whose 64-bit counts are strings).

    Returns:
        Per model name, cumulative counts: success, fail, executions, inferences (images
        of batched requests), and ns: success_ns, queue_ns, compute_ns (input + infer +
        output).
    """
    out: dict[str, Counter] = {}
    for model in reply.get("model_stats", []):
        stats = model.get("inference_stats", {})

        def count(key: str, unit: str = "count") -> int:
            return int(stats.get(key, {}).get(unit, 0))

        out.setdefault(model["name"], Counter()).update(
            success=count("success"), fail=count("fail"), success_ns=count("success", "ns"),
            queue_ns=count("queue", "ns"), executions=int(model.get("execution_count", 0)),
            inferences=int(model.get("inference_count", 0)), compute_ns=sum(
                count(k, "ns") for k in ("compute_input", "compute_infer", "compute_output")))
    return out


def handled(counts: Counter) -> int:
    """Count the requests a per_model() entry has handled: success + fail (see above)."""
    return counts["success"] + counts["fail"]


def delta(before: dict[str, Counter], after: dict[str, Counter], models) -> dict[str, dict]:
    """Compare two per_model() readings.

    Returns:
        Per model of ``models``: requests (success + fail), failed, executions, and per
        request the mean queue_ms, compute_ms and total_ms (of the successes), and batch
        (images per execution).
    """
    out = {}
    for model in models:
        d = after.get(model, Counter()).copy()
        d.subtract(before.get(model, Counter()))
        n, ok, runs = handled(d), d["success"], d["executions"]
        out[model] = {"requests": n, "failed": d["fail"], "executions": runs,
                      "queue_ms": d["queue_ns"] / n / 1e6 if n else 0.0,
                      "compute_ms": d["compute_ns"] / n / 1e6 if n else 0.0,
                      "total_ms": d["success_ns"] / ok / 1e6 if ok else 0.0,
                      "batch": d["inferences"] / runs if runs else 0.0}
    return out
