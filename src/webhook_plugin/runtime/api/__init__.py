"""The HTTP API (``CONTRACT.md`` section 4): its routes, and the edges every
input and answer goes through (:mod:`.io`)."""
