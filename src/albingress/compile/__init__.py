"""The compiler: a pure function from a :class:`~albingress.sources.Snapshot` to an IR.

No I/O, no clock, no logging: the same snapshot, in any order, gives the same IR and diagnostics.
"""
