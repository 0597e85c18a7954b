"""The data plane: the HTTP/1.1 load balancer that executes an IR.

Processes: :mod:`.supervisor` (binds the listeners, runs and restarts the workers, sends them
config and health) and :mod:`.worker` (one process; serves the inherited sockets).
In a worker, per connection: :mod:`.downstream` (the client side) reads requests with
:mod:`.request` into :mod:`.exchange` objects, which :mod:`.dispatch` routes
(:mod:`.routing`) and acts on (:mod:`.actions`, :mod:`.mirror`); forwarding picks a server
(:mod:`.balancer`) and relays over :mod:`.upstream` connections; :mod:`.response` builds the
client's response head. :mod:`.flow` is the back-pressure, :mod:`.wire` the HTTP constants,
:mod:`.context` the per-worker state, :mod:`.settings` the knobs. :mod:`.run_ir` serves an IR
file, for tests and benchmarks.
"""
