"""A non-decoupled model's sender: the final flag before any response is refused, with
the stub's message, which the one response then carries."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                refusal = "accepted"
            except Exception as e:
                refusal = f"{type(e).__name__}: {e}"
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor(
                "refusal", np.array([refusal.encode()], dtype=object))]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
