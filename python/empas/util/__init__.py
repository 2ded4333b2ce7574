"""Shared mechanics with no pipeline knowledge: atomic file writes and JSON
cleaning (:mod:`.io`), the one progress bar (:mod:`.progress`), rank statistics
(:mod:`.stats`), byte sizes (:mod:`.sizes`) and loopback sockets (:mod:`.net`).
Nothing here needs torch or the compiled extension."""
