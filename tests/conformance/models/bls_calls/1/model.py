"""BLS refused in initialize; a BLS call to a model that is not there fails, with its code."""
import numpy as np
import triton_python_backend_utils as pb_utils

CODES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED",
         "ALREADY_EXISTS", "CANCELLED")


def text(value):
    return np.array([str(value).encode()], dtype=object)


def call(model):
    return pb_utils.InferenceRequest(
        model_name=model, requested_output_names=["y"],
        inputs=[pb_utils.Tensor("x", np.array([1], np.int32))]).exec()


class TritonPythonModel:
    def initialize(self, args):
        try:
            call("absent")
            self.in_initialize = "allowed"
        except Exception as e:
            self.in_initialize = f"{type(e).__name__}: {e}"

    def execute(self, requests):
        response = call("absent")
        error = response.error()
        code = next((c for c in CODES if getattr(pb_utils.TritonError, c) == error.code()), "?")
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("in_initialize", text(self.in_initialize)),
            pb_utils.Tensor("absent_model", text(error.message())),
            pb_utils.Tensor("absent_code", text(code))]) for _ in requests]
