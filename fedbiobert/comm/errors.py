"""The error every communication wait raises when a peer is gone or silent."""


class PeerError(RuntimeError):
    """A peer timed out or failed; the message names the peer's role and rank."""
