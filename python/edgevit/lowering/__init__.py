"""Lowering to device runtimes: one backend per file behind :class:`~edgevit.lowering.base.Backend`."""
