"""Logger: its level enum is accepted, a level given as text is not."""
import numpy as np
import triton_python_backend_utils as pb_utils


def attempt(call):
    try:
        call()
        return "ok"
    except Exception as e:
        return type(e).__name__


class TritonPythonModel:
    def execute(self, requests):
        logger = pb_utils.Logger
        outcomes = [attempt(lambda: logger.log("enum", logger.LogLevel.WARNING)),
                    attempt(lambda: logger.log("default")),
                    attempt(lambda: logger.log_error("shorthand")),
                    attempt(lambda: logger.log("text", "warn"))]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "outcomes", np.array([o.encode() for o in outcomes], dtype=object))])
            for _ in requests]
