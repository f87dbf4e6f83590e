"""State kept per client across rounds (personal heads and models, control variates,
mixing weights): :class:`~fedp13n.state.store.ClientStateStore`, one memory-mapped file
per state tensor for all clients, with commits that a checkpoint can rely on.

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "ClientStateStore": "fedp13n.state.store",
    "state_spec": "fedp13n.state.store",
}
__all__ = ["ClientStateStore", "state_spec"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
