"""Shared by every process (torch-free): how the processes talk.

`protocol` (the messages and their schema-bounded decoder), `transport` (the three ZeroMQ channels), `memory`
(in-memory fakes of them, for tests), `security` (CURVE keys, loopback defaults) and `delivery` (exactly-once
bookkeeping of transition streams).
Import the submodules directly; this file stays free of imports so that importing one part never pulls in another.
"""
