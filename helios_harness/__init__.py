"""Running backends as real processes and talking to them: what bench/ and the test suites share.

Not installed (pyproject lists it in no package): a development tool beside bench/ and tests/,
imported from the repository root (pytest puts it on the path; the bench scripts add it). Neither
bench/ nor tests/ is a library for the other, so the launcher both need lives here, once. Named
helios_* like every top-level package, so the repository root on the path shadows nothing.

`launch`: start a command in its own process group, sample its tree's memory, wait until it
serves, plain HTTP. `realtime`: one session on vLLM-Omni's or SGLang's realtime video websocket.
"""
