"""BYTES in: the type of the element the model reads, and the element back."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            element = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("kind", np.array([type(element).__name__.encode()], dtype=object)),
                pb_utils.Tensor("value", np.array([element], dtype=object))]))
        return responses
