"""State kept per client across rounds (personal heads and models, control variates,
mixing weights): :class:`~fedp13n.state.store.ClientStateStore`, one memory-mapped file
per state tensor for all clients, with commits that a checkpoint can rely on.

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.state.store": "ClientStateStore state_spec",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
