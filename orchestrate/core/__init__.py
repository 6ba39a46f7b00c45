"""Pure logic: pipeline text -> agents, staleness, scheduling decisions, the
run lifecycle (`transitions`), pictures' drawing.

No file, process, clock or environment access: times come in as arguments.
It imports nothing outside `orchestrate.core` and no standard module that
touches files, processes or the clock (import-linter's contracts in
pyproject.toml, run by .ci/run), and `mypy --strict orchestrate/core` passes.
"""
