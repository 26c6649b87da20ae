"""Decoupled: execute reads the request and hands a thread the sender and plain data; the
thread sends three responses, then the final flag alone (python_backend's square_model)."""
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            x = int(pb_utils.get_input_tensor_by_name(request, "x").as_numpy()[0])
            thread = threading.Thread(target=self.answer,
                                      args=(request.get_response_sender(), x))
            thread.start()
            self.threads.append(thread)
        return None

    def answer(self, sender, x):
        for i in range(3):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor(
                "y", np.array([x + i], np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(5)
