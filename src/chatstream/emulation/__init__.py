"""An emulated OpenAI-compatible model server, kept apart from the product's `upstream/`.

One script engine (`emulator.py`) behind two adapters: the offline demo model
`make run` starts with when no model server is configured (`demo.py`, an
in-process transport), and `chatstream fake-upstream` (`fake_server.py`, real
HTTP), which the tests and the benchmarks talk to.
"""
