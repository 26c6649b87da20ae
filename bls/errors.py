"""Errors a client can act on: each names the input or parameter and the problem."""


class InvalidInput(ValueError):
    """A request's input or parameter is unusable. Answered as INVALID_ARG for that
    request alone; the rest of its batch is unaffected.

    kind: "input" (a tensor) or "parameter" (a request parameter).
    """

    def __init__(self, name: str, problem: str, kind: str = "input"):
        self.name = name
        self.problem = problem
        self.kind = kind
        super().__init__(f"{kind} '{name}': {problem}")


class Cancelled(RuntimeError):
    """The client cancelled the request (or went away): the work stops where it is and
    the request is answered CANCELLED, which nobody reads but Triton requires."""
