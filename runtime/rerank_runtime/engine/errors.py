"""Domain errors raised by the engine; the server maps each one to an HTTP status in one place."""

from __future__ import annotations


class RerankError(Exception):
    """Base class of every error a caller of the engine can cause or observe."""


class InvalidRequestError(RerankError):
    """The request is well-formed JSON of the right shape but asks for something that cannot be done."""


class PayloadTooLargeError(RerankError):
    """The request carries more data (bytes or documents) than this server accepts."""


class ModelNotFoundError(RerankError):
    """The request names a model this server does not serve."""


class ModelNotReadyError(RerankError):
    """The model is known but no version is loaded yet, or the server is shutting down."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverloadedError(RerankError):
    """Refused at admission: the request would not complete within its budget, or a bound is reached.

    `reason` is `budget`, `queue` or `inflight`; the client should retry after `retry_after` seconds.
    """

    def __init__(self, message: str, retry_after: float = 1.0, reason: str = "queue") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class DeadlineExceededError(RerankError):
    """The request's deadline passed while some of its rows were still waiting for inference (429)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoadError(RerankError):
    """A model version could not be verified, read, compiled or warmed up."""
