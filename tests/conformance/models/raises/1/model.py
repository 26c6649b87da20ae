"""An execute that raises: every request of the batch gets the stub's INTERNAL error."""


class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("boom")
