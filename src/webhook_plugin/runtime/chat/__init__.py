"""The chat pipeline: a message through its stages (:mod:`.pipeline`), the
Inbox (:mod:`.inbox`), the message commit (:mod:`.writes`), the chat store and
its schema, the channels' rules, the built-in responder, and the pipeline as
ASGI middleware for any app (:mod:`.middleware`)."""
