"""Non-decoupled, answered after execute returned: the sender outlives the request, whose
inputs were copied out in execute (as pipeline_bls once did)."""
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy().copy()
            thread = threading.Thread(target=self.answer,
                                      args=(request.get_response_sender(), x))
            thread.start()
            self.threads.append(thread)
        return None

    def answer(self, sender, x):
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(5)
